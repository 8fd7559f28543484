// The ticket file reader of the C runtime: safetensors bytes -> validated, engine-ready layers.
//
// It checks what lth_sparse.ticket.read_ticket checks (format name and version, metadata
// fields, layer order and chaining, tensor keys, sha256 of every tensor's bytes, dtypes and
// shapes against the metadata, CSR invariants, finite values and biases, architecture sizes)
// with the same wording where it can, plus the limits of this runtime (int32 row pointers and
// column ids in the engine). Every size a file claims is checked against the bytes actually
// present before anything proportional to it is allocated.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "lth_ticket.h"

namespace lth_ticket_rt {

// Every way a ticket fails to load: one message naming the problem and the fix.
class LoadError : public std::runtime_error {
 public:
  LoadError(lth_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  lth_status status() const { return status_; }

 private:
  lth_status status_;
};

// One layer converted to what the engine takes: int32 indptr, uint16 or int32 column ids,
// fp32 values and bias (fp16/bf16 widened exactly; fp64 rounded to fp32).
struct LoadedLayer {
  std::string name;
  int64_t n_out = 0, n_in = 0, nnz = 0;
  bool has_bias = false;
  std::string index_dtype, value_dtype;  // as stored (logical dtype of the ticket)
  std::vector<int32_t> indptr;           // n_out + 1
  std::vector<uint16_t> indices_u16;     // nnz, when the file stores uint16
  std::vector<int32_t> indices_i32;      // nnz, otherwise (int32, or int64 narrowed)
  std::vector<float> values;             // nnz
  std::vector<float> bias;               // n_out, or empty
};

// metadata.input as `lth-sparse export` writes it; has_input false when absent.
struct InputSpec {
  bool has_input = false;
  std::string error;  // non-empty when metadata.input exists but is malformed
  int64_t flatten = 0;
  double scale = 1.0;
  bool has_normalize = false;
  double mean = 0.0, std = 1.0;
};

struct LoadedTicket {
  std::vector<LoadedLayer> layers;
  std::string metadata_json;  // the JSON document as stored
  int64_t weights = 0;        // sum of n_out * n_in (fits int64: checked)
  InputSpec input;
};

// Throws LoadError; never returns a partly checked ticket.
LoadedTicket load_ticket_file(const std::string& path);

}  // namespace lth_ticket_rt
