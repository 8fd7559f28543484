// A small, validating reader and an atomic writer for NumPy .npy files (the CLI's I/O).
//
// Reads format versions 1.0-3.0 with a little-endian float32, float64 or uint8 payload in C
// order; everything else (pickled objects, big-endian, Fortran order, a header or payload
// that disagrees with the file's size) is refused with one message naming the problem.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lth_ticket_rt {

class NpyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct NpyArray {
  enum class DType { kFloat32, kFloat64, kUInt8 } dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  std::vector<uint8_t> bytes;  // numel * element size, little-endian, C order
};

// Throws NpyError. Allocates only after the header's shape agrees with the file's size.
NpyArray read_npy(const std::string& path);

// Writes a (rows, cols) float32 array as .npy v1.0: to a temporary file in the same folder,
// fsync, then rename over `path`, so an interrupted write never leaves a half file there.
void write_npy_f32(const std::string& path, const float* data, int64_t rows, int64_t cols);

}  // namespace lth_ticket_rt
