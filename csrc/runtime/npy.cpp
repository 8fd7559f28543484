// See npy.h. Format reference: numpy/lib/format.py (NEP 1).
#include "npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

namespace lth_ticket_rt {

namespace {

constexpr size_t kMaxHeaderBytes = 1 << 16;  // numpy itself refuses headers over 10000 bytes

[[noreturn]] void fail(const std::string& msg) { throw NpyError(msg); }

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// A cursor over the header's Python-literal dict: {'descr': '<f4', 'fortran_order': False,
// 'shape': (3, 784), }
struct Literal {
  const std::string& s;
  size_t i = 0;
  std::string where;

  void skip() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  [[noreturn]] void bad(const std::string& why) {
    fail(where + " has a malformed .npy header (" + why + ")");
  }
  bool eat(char c) {
    skip();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) bad(std::string("expected '") + c + "'");
  }
  std::string string() {
    skip();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad("expected a quoted string");
    const char q = s[i++];
    size_t start = i;
    while (i < s.size() && s[i] != q) ++i;
    if (i >= s.size()) bad("unterminated string");
    return s.substr(start, i++ - start);
  }
  bool boolean() {
    skip();
    if (s.compare(i, 4, "True") == 0) {
      i += 4;
      return true;
    }
    if (s.compare(i, 5, "False") == 0) {
      i += 5;
      return false;
    }
    bad("expected True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> out;
    expect('(');
    while (!eat(')')) {
      skip();
      if (i >= s.size() || s[i] < '0' || s[i] > '9') bad("shape entries must be integers >= 0");
      int64_t v = 0;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("shape entry too large");
        v = v * 10 + (s[i++] - '0');
      }
      out.push_back(v);
      if (out.size() > 32) bad("more than 32 dimensions");
      if (!eat(',')) {
        expect(')');
        break;
      }
    }
    return out;
  }
};

}  // namespace

NpyArray read_npy(const std::string& path) {
  const std::string where = "input '" + path + "'";
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) {
    if (errno == ENOENT) fail(where + " does not exist; check the path");
    fail(where + " cannot be read: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(f.fd, &st) != 0) fail(where + " cannot be read: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(where + " is not a regular file; give a .npy file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  auto read_exact = [&](void* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::read(f.fd, static_cast<char*>(dst) + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail(where + " cannot be read: " + std::strerror(errno));
      if (r == 0) fail(where + " is truncated; save it again with numpy.save");
      got += static_cast<size_t>(r);
    }
  };

  unsigned char prefix[12];
  if (size < 10) fail(where + " is not a .npy file (only " + std::to_string(size) + " bytes)");
  read_exact(prefix, 10);
  if (std::memcmp(prefix, "\x93NUMPY", 6) != 0)
    fail(where + " is not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save");
  const int major = prefix[6];
  uint64_t header_len, offset;
  if (major == 1) {
    header_len = prefix[8] | (prefix[9] << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) fail(where + " is truncated; save it again with numpy.save");
    read_exact(prefix + 10, 2);
    header_len = uint64_t{prefix[8]} | uint64_t{prefix[9]} << 8 | uint64_t{prefix[10]} << 16 |
                 uint64_t{prefix[11]} << 24;
    offset = 12;
  } else {
    fail(where + " has .npy format version " + std::to_string(major) + "." +
         std::to_string(prefix[7]) + "; this reader knows versions 1.0 to 3.0");
  }
  if (header_len > kMaxHeaderBytes)
    fail(where + " has a .npy header of " + std::to_string(header_len) + " bytes, over the " +
         std::to_string(kMaxHeaderBytes) + "-byte limit");
  if (header_len > size - offset)
    fail(where + " is truncated: its header needs " + std::to_string(header_len) + " bytes");
  std::string header(static_cast<size_t>(header_len), '\0');
  read_exact(&header[0], header.size());

  Literal lit{header, 0, where};
  std::string descr;
  bool fortran = false, have_descr = false, have_fortran = false, have_shape = false;
  std::vector<int64_t> shape;
  lit.expect('{');
  while (!lit.eat('}')) {
    const std::string key = lit.string();
    lit.expect(':');
    if (key == "descr") {
      descr = lit.string();
      have_descr = true;
    } else if (key == "fortran_order") {
      fortran = lit.boolean();
      have_fortran = true;
    } else if (key == "shape") {
      shape = lit.tuple();
      have_shape = true;
    } else {
      lit.bad("unexpected key '" + key + "'");
    }
    if (!lit.eat(',')) {
      lit.expect('}');
      break;
    }
  }
  if (!(have_descr && have_fortran && have_shape))
    lit.bad("needs 'descr', 'fortran_order' and 'shape'");

  NpyArray a;
  size_t elsize;
  if (descr == "<f4") {
    a.dtype = NpyArray::DType::kFloat32;
    elsize = 4;
  } else if (descr == "<f8") {
    a.dtype = NpyArray::DType::kFloat64;
    elsize = 8;
  } else if (descr == "|u1" || descr == "<u1" || descr == "u1") {
    a.dtype = NpyArray::DType::kUInt8;
    elsize = 1;
  } else {
    fail(where + " holds dtype '" + descr + "'; give little-endian float32 (numpy '<f4'), "
                 "float64 or uint8 images, e.g. x.astype(numpy.float32)");
  }
  if (fortran && shape.size() > 1)
    fail(where + " is in Fortran order; save numpy.ascontiguousarray(x) instead");
  uint64_t numel = 1;
  for (int64_t s : shape)
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(s), &numel))
      fail(where + " claims a shape too large for any file");
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, uint64_t{elsize}, &nbytes) ||
      nbytes != size - offset - header_len)
    fail(where + ": its header claims " + std::to_string(numel) + " elements but the file holds " +
         std::to_string(size - offset - header_len) + " data bytes; the file is truncated or "
         "corrupt, save it again");
  a.shape = shape;
  a.numel = static_cast<int64_t>(numel);
  a.bytes.resize(static_cast<size_t>(nbytes));  // equals bytes that exist in the file
  read_exact(a.bytes.data(), a.bytes.size());
  return a;
}

void write_npy_f32(const std::string& path, const float* data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  // numpy aligns the data to 64 bytes: magic (6) + version (2) + length (2) + header + '\n'.
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Fd f;
  f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f.fd < 0) fail("output '" + path + "' cannot be written: " + std::strerror(errno));
  auto write_all = [&](const void* src, size_t n) {
    size_t done = 0;
    while (done < n) {
      ssize_t w = ::write(f.fd, static_cast<const char*>(src) + done, n - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        const std::string why = std::strerror(errno);
        ::unlink(tmp.c_str());
        fail("output '" + path + "' cannot be written: " + why);
      }
      done += static_cast<size_t>(w);
    }
  };
  const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                    static_cast<unsigned char>(header.size() & 0xFF),
                                    static_cast<unsigned char>(header.size() >> 8)};
  write_all(prefix, sizeof prefix);
  write_all(header.data(), header.size());
  write_all(data, static_cast<size_t>(rows) * static_cast<size_t>(cols) * sizeof(float));
  const bool synced = ::fsync(f.fd) == 0;
  const int sync_errno = errno;
  const bool closed = ::close(f.fd) == 0;
  f.fd = -1;
  if (!synced || !closed) {
    const std::string why = std::strerror(synced ? errno : sync_errno);
    ::unlink(tmp.c_str());
    fail("output '" + path + "' cannot be written: " + why);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail("output '" + path + "' cannot be written: " + why);
  }
}

}  // namespace lth_ticket_rt
