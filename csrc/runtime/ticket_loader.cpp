// See ticket_loader.h. The checks follow lth_sparse/sparse/ticket_file.py (_read_safetensors,
// _parse_metadata, _build_layers) and CSRMatrix.validate in the same order, so that one bad
// file gets the same first complaint from Python and from C.
#include "ticket_loader.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace lth_ticket_rt {

using json = nlohmann::json;

namespace {

constexpr const char* kFormatName = "lth_sparse.ticket";
constexpr int64_t kReadableVersion = 1;
constexpr const char* kMetadataKey = "lth_sparse";
// safetensors' own limit on its JSON header (MAX_HEADER_SIZE in the safetensors crate).
constexpr uint64_t kMaxHeaderBytes = 100000000;
// Deeper JSON than this is not a ticket; the bound keeps nlohmann's recursive destructor and
// our walk of the document far from the stack's limit on a hostile header.
constexpr int kMaxJsonDepth = 64;
constexpr int64_t kUint16MaxCols = 65536;
constexpr int64_t kInt32Limit = int64_t{1} << 31;  // engine row pointers and column ids are int32

[[noreturn]] void fail(lth_status status, const std::string& msg) { throw LoadError(status, msg); }

std::string squote(const std::string& s) { return "'" + s + "'"; }

std::string not_a_ticket(const std::string& where, const std::string& why) {
  return where + " is not an lth_sparse ticket file (" + why +
         "); tickets are written by `lth-sparse export` / lth_sparse.sparse.ticket_file.save_ticket";
}

// ------------------------------------------------------------------------- the file's bytes

std::vector<uint8_t> read_whole_file(const std::string& path, const std::string& where) {
  // O_NONBLOCK: a FIFO opens at once (then is refused below) instead of waiting for a writer;
  // regular files ignore it.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      fail(LTH_ERR_IO, where + " does not exist; check the path (export one with "
                               "`lth-sparse export RUN -o FILE`)");
    if (e == EISDIR) fail(LTH_ERR_IO, where + " is a directory, not a ticket file");
    fail(LTH_ERR_IO, where + " cannot be read: " + std::strerror(e));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail(LTH_ERR_IO, where + " cannot be read: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(LTH_ERR_IO, where + " is a directory, not a ticket file");
  // A FIFO or a device has no size to check against and may never end: not a ticket.
  if (!S_ISREG(st.st_mode))
    fail(LTH_ERR_IO, where + " is not a regular file; give the path of a ticket file");
  // The buffer is the size the file system reports for bytes that exist, never a size the
  // file's content claims.
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > std::numeric_limits<size_t>::max() / 2)
    fail(LTH_ERR_UNSUPPORTED, where + " is too large to load on this machine");
  std::vector<uint8_t> data;
  try {
    data.resize(static_cast<size_t>(size));
  } catch (const std::bad_alloc&) {
    fail(LTH_ERR_OUT_OF_MEMORY, where + " (" + std::to_string(size) +
                                    " bytes) does not fit in memory");
  }
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(LTH_ERR_IO, where + " cannot be read: " + std::strerror(errno));
    }
    if (n == 0) break;  // the file shrank while we read it
    got += static_cast<size_t>(n);
  }
  data.resize(got);
  return data;
}

// ------------------------------------------------------------------------- JSON helpers

// Nesting depth of a JSON text (brackets outside strings); returns > limit as soon as seen.
int json_depth(const char* p, size_t n, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == '}' || c == ']') --depth;
  }
  return deepest;
}

json parse_json(const char* p, size_t n, const std::string& what_on_error) {
  if (json_depth(p, n, kMaxJsonDepth) > kMaxJsonDepth)
    fail(LTH_ERR_BAD_FILE, what_on_error + " (JSON nested deeper than " +
                               std::to_string(kMaxJsonDepth) + " levels)");
  try {
    return json::parse(p, p + n);
  } catch (const json::exception& e) {
    fail(LTH_ERR_BAD_FILE, what_on_error + " (" + e.what() + ")");
  }
}

bool is_int(const json& v) { return v.is_number_integer(); }  // booleans are not numbers here

// An integer JSON value as int64; false when it is not an integer or does not fit.
bool as_int64(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  return false;
}

std::string type_name(const json& v) { return v.is_number_integer() ? "int" : v.type_name(); }

enum class Kind { kObject, kArray, kString, kInt, kBool };

bool has_kind(const json& v, Kind k) {
  switch (k) {
    case Kind::kObject: return v.is_object();
    case Kind::kArray: return v.is_array();
    case Kind::kString: return v.is_string();
    case Kind::kInt: return is_int(v);
    case Kind::kBool: return v.is_boolean();
  }
  return false;
}

// ticket.py's _field: the value of d[key] of the given kind, or a message naming the label.
const json& field(const json& d, const char* key, Kind kind, const std::string& where,
                  const std::string& label) {
  if (!d.is_object() || !d.contains(key))
    fail(LTH_ERR_BAD_FILE, where + ": metadata field " + squote(label) + " is missing");
  const json& v = d.at(key);
  if (!has_kind(v, kind))
    fail(LTH_ERR_BAD_FILE, where + ": metadata field " + squote(label) +
                               " has the wrong type (" + type_name(v) + ")");
  return v;
}

std::string shape_text(const std::vector<int64_t>& s, bool tuple) {
  std::string out = tuple ? "(" : "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  if (tuple && s.size() == 1) out += ",";
  return out + (tuple ? ")" : "]");
}

// ------------------------------------------------------------------------- dtypes

enum class Elem { kU16, kI32, kI64, kF16, kBF16, kF32, kF64, kOther };

struct DType {
  const char* st;    // safetensors code
  const char* name;  // lth_sparse / torch name
  size_t size;
  Elem elem;         // for per-element loads without string compares
};
// Every safetensors dtype, so that sizes of any entry can be checked; the ticket uses the
// seven with a torch name.
constexpr DType kDTypes[] = {
    {"U16", "uint16", 2, Elem::kU16},     {"I32", "int32", 4, Elem::kI32},
    {"I64", "int64", 8, Elem::kI64},      {"F16", "float16", 2, Elem::kF16},
    {"BF16", "bfloat16", 2, Elem::kBF16}, {"F32", "float32", 4, Elem::kF32},
    {"F64", "float64", 8, Elem::kF64},    {"BOOL", "", 1, Elem::kOther},
    {"U8", "", 1, Elem::kOther},          {"I8", "", 1, Elem::kOther},
    {"F8_E5M2", "", 1, Elem::kOther},     {"F8_E4M3", "", 1, Elem::kOther},
    {"I16", "", 2, Elem::kOther},         {"U32", "", 4, Elem::kOther},
    {"U64", "", 8, Elem::kOther},
};

const DType* dtype_by_code(const std::string& code) {
  for (const DType& d : kDTypes)
    if (code == d.st) return &d;
  return nullptr;
}

bool known_name(const std::string& name) {
  for (const DType& d : kDTypes)
    if (*d.name && name == d.name) return true;
  return false;
}

std::string display_name(const DType* d) { return *d->name ? d->name : d->st; }

// ------------------------------------------------------------------------- safetensors

struct Entry {
  const DType* dtype = nullptr;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t begin = 0, end = 0;  // offsets into the data section
  const uint8_t* bytes = nullptr;
};

std::string sha256_hex(const uint8_t* p, size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(p, n, md, &len, EVP_sha256(), nullptr) != 1)
    fail(LTH_ERR_INTERNAL, "OpenSSL could not compute a sha256 digest");
  static const char* hex = "0123456789abcdef";
  std::string out(2 * len, '0');
  for (unsigned i = 0; i < len; ++i) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  return out;
}

// Little-endian loads from possibly unaligned file bytes.
template <typename T>
T load(const uint8_t* p, int64_t i) {
  T v;
  std::memcpy(&v, p + static_cast<size_t>(i) * sizeof(T), sizeof(T));
  return v;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | ((mant & 0x3FFu) << 13);
    }
  } else {
    bits = sign | (exp + 127 - 15) << 23 | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float32 -> bfloat16 -> float32, round to nearest even (torch's .to(torch.bfloat16)).
float round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return f;
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return bf16_to_float(static_cast<uint16_t>(bits >> 16));
}

// A float tensor (values or bias) as fp32. `bf16_round`: the metadata says the float32 bytes
// hold bfloat16 values (the npz convention), so round them as Python does.
std::vector<float> to_float32(const Entry& e, bool bf16_round) {
  std::vector<float> out(static_cast<size_t>(e.numel));
  const Elem elem = e.dtype->elem;
  for (int64_t i = 0; i < e.numel; ++i) {
    float v;
    if (elem == Elem::kF32) v = load<float>(e.bytes, i);
    else if (elem == Elem::kF16) v = half_to_float(load<uint16_t>(e.bytes, i));
    else if (elem == Elem::kBF16) v = bf16_to_float(load<uint16_t>(e.bytes, i));
    else {  // float64, checked finite first; beyond float32's range becomes inf (refused later)
      const double d = load<double>(e.bytes, i);
      v = std::fabs(d) > std::numeric_limits<float>::max()
              ? (d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity())
              : static_cast<float>(d);
    }
    out[static_cast<size_t>(i)] = bf16_round ? round_to_bf16(v) : v;
  }
  return out;
}

// First non-finite element of a float tensor as stored (so fp64 values are judged before
// narrowing), or -1; `count` gets how many are non-finite.
int64_t first_non_finite(const Entry& e, int64_t* count, double* value) {
  int64_t first = -1;
  *count = 0;
  const Elem elem = e.dtype->elem;
  for (int64_t i = 0; i < e.numel; ++i) {
    double v;
    if (elem == Elem::kF64) v = load<double>(e.bytes, i);
    else if (elem == Elem::kF32) v = load<float>(e.bytes, i);
    else if (elem == Elem::kF16) v = half_to_float(load<uint16_t>(e.bytes, i));
    else v = bf16_to_float(load<uint16_t>(e.bytes, i));
    if (!std::isfinite(v)) {
      if (first < 0) {
        first = i;
        *value = v;
      }
      ++*count;
    }
  }
  return first;
}

std::string float_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream s;
  s << v;
  return s.str();
}

// Element i of an index tensor (dtype checked to be uint16, int32 or int64 by the caller).
int64_t integer_at(const Entry& e, int64_t i) {
  switch (e.dtype->elem) {
    case Elem::kU16: return load<uint16_t>(e.bytes, i);
    case Elem::kI32: return load<int32_t>(e.bytes, i);
    default: return load<int64_t>(e.bytes, i);
  }
}

int64_t row_of(const std::vector<int64_t>& ip, int64_t j) {
  return static_cast<int64_t>(std::upper_bound(ip.begin(), ip.end(), j) - ip.begin()) - 1;
}

// ------------------------------------------------------------------------- the reader

struct Reader {
  std::string where;
  std::vector<uint8_t> data;
  json metadata;  // the lth_sparse JSON document
  std::string metadata_text;
  std::map<std::string, Entry> entries;

  void read_safetensors();
  void parse_metadata(const json& text_value);
  LoadedTicket build_layers();
};

void Reader::read_safetensors() {
  const uint64_t size = data.size();
  if (size < 8) {
    if (size == 0)
      fail(LTH_ERR_BAD_FILE, where + " is empty (0 bytes): truncated or never written; export "
                                     "the ticket again");
    fail(LTH_ERR_BAD_FILE, not_a_ticket(where, "only " + std::to_string(size) + " bytes"));
  }
  if (std::memcmp(data.data(), "PK\x03\x04", 4) == 0)
    fail(LTH_ERR_UNSUPPORTED,
         where + " is an npz ticket; the C runtime reads safetensors tickets only: use the "
                 ".safetensors ticket that `lth-sparse export` writes beside the .npz");
  const uint64_t header_len = load<uint64_t>(data.data(), 0);
  if (size < 9 || data[8] != '{')
    fail(LTH_ERR_BAD_FILE, not_a_ticket(where, "neither a safetensors nor an npz file"));
  if (header_len > size - 8)
    fail(LTH_ERR_BAD_FILE, where + " is truncated: its safetensors header needs " +
                               std::to_string(header_len) + " bytes but only " +
                               std::to_string(size - 8) + " follow; export it again");
  if (header_len > kMaxHeaderBytes)
    fail(LTH_ERR_BAD_FILE, where + " has a safetensors header of " + std::to_string(header_len) +
                               " bytes, over the format's limit of " +
                               std::to_string(kMaxHeaderBytes) + "; the file is corrupt");
  const char* text = reinterpret_cast<const char*>(data.data() + 8);
  json header = parse_json(text, static_cast<size_t>(header_len),
                           where + " has a corrupt safetensors header; export it again");
  if (!header.is_object())
    fail(LTH_ERR_BAD_FILE, not_a_ticket(where, "safetensors header is not a JSON object"));

  const uint64_t body = size - 8 - header_len;
  const uint8_t* base = data.data() + 8 + header_len;
  uint64_t end = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string corrupt =
        where + " has a corrupt safetensors header entry for " + squote(it.key());
    const json& info = it.value();
    const json* offs = info.is_object() && info.contains("data_offsets") ? &info["data_offsets"]
                                                                        : nullptr;
    int64_t a = -1, b = -1;
    if (!(offs && offs->is_array() && offs->size() == 2 && as_int64((*offs)[0], &a) &&
          as_int64((*offs)[1], &b) && 0 <= a && a <= b))
      fail(LTH_ERR_BAD_FILE, corrupt);
    Entry e;
    e.begin = static_cast<uint64_t>(a);
    e.end = static_cast<uint64_t>(b);
    end = std::max(end, e.end);
    if (!info.contains("dtype") || !info["dtype"].is_string() ||
        !(e.dtype = dtype_by_code(info["dtype"].get<std::string>())))
      fail(LTH_ERR_BAD_FILE, corrupt + " (unknown or missing dtype)");
    if (!info.contains("shape") || !info["shape"].is_array())
      fail(LTH_ERR_BAD_FILE, corrupt + " (missing shape)");
    for (const json& s : info["shape"]) {
      int64_t v;
      if (!as_int64(s, &v) || v < 0) fail(LTH_ERR_BAD_FILE, corrupt + " (bad shape)");
      e.shape.push_back(v);
    }
    entries.emplace(it.key(), std::move(e));
  }
  if (end > body)
    fail(LTH_ERR_BAD_FILE, where + " is truncated: its tensors need " + std::to_string(end) +
                               " data bytes but the file holds " + std::to_string(body) +
                               "; export it again");

  const json no_metadata = json::object();
  const json& st_meta = header.contains("__metadata__") && !header["__metadata__"].is_null()
                            ? header["__metadata__"]
                            : no_metadata;
  if (!st_meta.is_object() || !st_meta.contains(kMetadataKey))
    fail(LTH_ERR_BAD_FILE,
         not_a_ticket(where, std::string("a safetensors file without the '") + kMetadataKey +
                                 "' metadata"));
  parse_metadata(st_meta[kMetadataKey]);

  // What safetensors itself enforces when it loads the tensors: each entry's byte length is
  // its element count times the dtype's size, and the entries tile the data section exactly.
  std::vector<std::pair<uint64_t, std::string>> order;
  for (auto& kv : entries) {
    Entry& e = kv.second;
    uint64_t numel = 1;
    for (int64_t s : e.shape)
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(s), &numel))
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(kv.first) + " claims a shape " +
                                   shape_text(e.shape, false) + " too large for any file");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(e.dtype->size), &nbytes))
      fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(kv.first) + " claims a shape " +
                                 shape_text(e.shape, false) + " too large for any file");
    if (nbytes != e.end - e.begin)
      fail(LTH_ERR_BAD_FILE,
           where + ": tensor " + squote(kv.first) + " of shape " + shape_text(e.shape, false) +
               " and dtype " + e.dtype->st + " needs " + std::to_string(nbytes) +
               " bytes but its data_offsets span " + std::to_string(e.end - e.begin) +
               "; the file is corrupt, export it again");
    e.numel = static_cast<int64_t>(numel);
    e.bytes = base + e.begin;
    order.emplace_back(e.begin, kv.first);
  }
  // By (begin, end): empty tensors sharing a begin with a full one come before it.
  std::sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
    const Entry &ea = entries[a.second], &eb = entries[b.second];
    return ea.begin != eb.begin ? ea.begin < eb.begin : ea.end < eb.end;
  });
  uint64_t expected = 0;
  for (auto& o : order) {
    const Entry& e = entries[o.second];
    if (e.begin != expected)
      fail(LTH_ERR_BAD_FILE, where + ": the tensors' data_offsets overlap or leave a gap at "
                                     "tensor " + squote(o.second) +
                                     "; the file is corrupt, export it again");
    expected = e.end;
  }
  if (expected != body)
    fail(LTH_ERR_BAD_FILE, where + ": " + std::to_string(body - expected) +
                               " bytes after the last tensor belong to no tensor; the file is "
                               "corrupt, export it again");
}

void Reader::parse_metadata(const json& text_value) {
  if (!text_value.is_string())
    fail(LTH_ERR_BAD_FILE, where + ": the ticket metadata is not valid JSON (not a string)");
  metadata_text = text_value.get<std::string>();
  metadata = parse_json(metadata_text.data(), metadata_text.size(),
                        where + ": the ticket metadata is not valid JSON");
  if (!metadata.is_object())
    fail(LTH_ERR_BAD_FILE, where + ": the ticket metadata must be a JSON object");
  const json format = metadata.contains("format") ? metadata["format"] : json(nullptr);
  if (!(format.is_string() && format.get<std::string>() == kFormatName))
    fail(LTH_ERR_BAD_FILE, not_a_ticket(where, "format is " + format.dump() + ", expected '" +
                                                   kFormatName + "'"));
  const json version = metadata.contains("format_version") ? metadata["format_version"]
                                                            : json(nullptr);
  int64_t v = 0;
  if (!(as_int64(version, &v) && v == kReadableVersion))
    fail(LTH_ERR_UNSUPPORTED,
         where + " has ticket format version " + version.dump() + "; this runtime (lth_ticket " +
             lth_ticket_version() + ") reads format version " + std::to_string(kReadableVersion) +
             " only. Use the lth_sparse version that wrote it, or re-export the ticket");
}

struct Part {
  const Entry* entry = nullptr;
  std::string logical;  // dtype per the metadata
};

LoadedTicket Reader::build_layers() {
  const json& arch = field(metadata, "architecture", Kind::kObject, where, "architecture");
  const json& sizes = field(arch, "sizes", Kind::kArray, where, "architecture.sizes");
  const std::string activation =
      field(arch, "activation", Kind::kString, where, "architecture.activation").get<std::string>();
  if (activation != "relu")
    fail(LTH_ERR_UNSUPPORTED, where + ": unsupported activation " + squote(activation) +
                                  "; this runtime supports relu");
  const json& order = field(metadata, "layer_order", Kind::kArray, where, "layer_order");
  const json& docs = field(metadata, "layers", Kind::kObject, where, "layers");
  std::set<std::string> order_names, doc_names;
  bool ok = !order.empty();
  for (const json& n : order) {
    if (!n.is_string()) {
      ok = false;
      break;
    }
    ok = ok && order_names.insert(n.get<std::string>()).second;
  }
  if (!ok)
    fail(LTH_ERR_BAD_FILE, where + ": metadata 'layer_order' must list unique layer names");
  for (auto it = docs.begin(); it != docs.end(); ++it) doc_names.insert(it.key());
  if (order_names != doc_names)
    fail(LTH_ERR_BAD_FILE, where + ": metadata 'layer_order' " + order.dump() + " and 'layers' " +
                               json(doc_names).dump() + " disagree");

  LoadedTicket out;
  std::set<std::string> claimed;
  static const char* kParts[] = {"indptr", "indices", "values", "bias"};
  for (const json& name_json : order) {
    const std::string name = name_json.get<std::string>();
    const std::string lw = "layer " + squote(name);  // CSRMatrix.validate's prefix
    const json& doc = docs[name];
    const std::string label = "layers." + name;
    const json& shape = field(doc, "shape", Kind::kArray, where, label + ".shape");
    int64_t n_rows = 0, n_cols = 0;
    if (!(shape.size() == 2 && as_int64(shape[0], &n_rows) && as_int64(shape[1], &n_cols) &&
          n_rows > 0 && n_cols > 0))
      fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + " has an invalid shape " +
                                 shape.dump() + " in the metadata; expected [out_features, "
                                 "in_features] > 0");
    const bool has_bias = field(doc, "has_bias", Kind::kBool, where, label + ".has_bias").get<bool>();
    const json& tdocs = field(doc, "tensors", Kind::kObject, where, label + ".tensors");
    std::map<std::string, Part> parts;
    for (const char* part : kParts) {
      const std::string plabel = label + ".tensors." + part;
      if (std::string(part) == "bias" && !has_bias) {
        if (tdocs.contains("bias"))
          fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) +
                                     " says has_bias=false but lists a bias tensor");
        continue;
      }
      const json& td = field(tdocs, part, Kind::kObject, where, plabel);
      const std::string key = field(td, "key", Kind::kString, where, plabel + ".key").get<std::string>();
      if (!claimed.insert(key).second)
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + " is claimed twice in the metadata");
      auto found = entries.find(key);
      if (found == entries.end())
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + " (layer " + squote(name) +
                                   " " + part + ") is missing from the file; the file is "
                                   "incomplete, export it again");
      const Entry& e = found->second;
      const std::string digest = sha256_hex(e.bytes, static_cast<size_t>(e.end - e.begin));
      const std::string expected =
          field(td, "sha256", Kind::kString, where, plabel + ".sha256").get<std::string>();
      if (digest != expected)
        fail(LTH_ERR_BAD_FILE, where + ": checksum mismatch for tensor " + squote(key) +
                                   ": the file holds sha256 " + digest.substr(0, 16) +
                                   "..., the metadata records " + expected.substr(0, 16) +
                                   "...; the file is corrupt, export it again");
      const std::string stored =
          field(td, "stored_dtype", Kind::kString, where, plabel + ".stored_dtype").get<std::string>();
      const std::string logical =
          field(td, "dtype", Kind::kString, where, plabel + ".dtype").get<std::string>();
      if (!known_name(stored) || !known_name(logical))
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + " has unknown dtype " +
                                   squote(logical) + "/" + squote(stored) + " in the metadata");
      if (stored != e.dtype->name)
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + " is stored as " +
                                   display_name(e.dtype) + " but the metadata says " + stored);
      const json& tshape = field(td, "shape", Kind::kArray, where, plabel + ".shape");
      if (tshape != json(e.shape))
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + " has shape " +
                                   shape_text(e.shape, false) + " but the metadata says " +
                                   tshape.dump());
      if (logical != stored && !(stored == "float32" && logical == "bfloat16"))
        fail(LTH_ERR_BAD_FILE, where + ": tensor " + squote(key) + ": storing " + logical +
                                   " as " + stored + " is not supported");
      parts[part] = Part{&e, logical};
    }

    // ---- CSRMatrix.validate, in its order
    const Entry& ip_e = *parts["indptr"].entry;
    const Entry& ix_e = *parts["indices"].entry;
    const Entry& va_e = *parts["values"].entry;
    if (n_cols != 0 && n_rows > std::numeric_limits<int64_t>::max() / n_cols)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": n_rows * n_cols does not fit in int64");
    for (const char* part : {"indptr", "indices", "values"}) {
      const Entry& e = *parts[part].entry;
      if (e.shape.size() != 1)
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": " + part + " must be 1-D, got shape " +
                                   shape_text(e.shape, true));
    }
    const std::string ip_t = parts["indptr"].logical, ix_t = parts["indices"].logical,
                      va_t = parts["values"].logical;
    if (ip_t != "int32" && ip_t != "int64")
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": indptr dtype must be int32 or int64, got " + ip_t);
    if (ix_t != "uint16" && ix_t != "int32" && ix_t != "int64")
      fail(LTH_ERR_BAD_FILE, where + ": " + lw +
                                 ": indices dtype must be uint16, int32 or int64, got " + ix_t);
    auto is_float = [](const std::string& t) {
      return t == "float32" || t == "float16" || t == "bfloat16" || t == "float64";
    };
    if (!is_float(va_t))
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": values dtype must be float32, float16, "
                                                 "bfloat16 or float64, got " + va_t);
    if (ix_t == "uint16" && n_cols > kUint16MaxCols)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": uint16 indices need n_cols <= 65536, got "
                                                 "n_cols=" + std::to_string(n_cols) +
                                                 "; store indices as int32");
    if (ip_e.numel != n_rows + 1)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": len(indptr) must be n_rows + 1 = " +
                                 std::to_string(n_rows + 1) + ", got " + std::to_string(ip_e.numel));
    const int64_t nnz = va_e.numel;
    if (ix_e.numel != nnz)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": len(indices) = " + std::to_string(ix_e.numel) +
                                 " must equal len(values) = " + std::to_string(nnz));
    if (ip_t == "int32" && nnz >= kInt32Limit)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": nnz = " + std::to_string(nnz) +
                                 " needs int64 indptr, got int32");
    // indptr is n_rows + 1 entries that exist in the file, so this is bounded by its size.
    std::vector<int64_t> ip(static_cast<size_t>(ip_e.numel));
    for (int64_t r = 0; r <= n_rows; ++r) ip[static_cast<size_t>(r)] = integer_at(ip_e, r);
    if (ip[0] != 0)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": indptr[0] must be 0, got " + std::to_string(ip[0]));
    for (int64_t r = 0; r < n_rows; ++r)
      if (ip[r + 1] < ip[r])
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": indptr must be non-decreasing (row " +
                                   std::to_string(r) + " has indptr[" + std::to_string(r + 1) +
                                   "]=" + std::to_string(ip[r + 1]) + " < indptr[" +
                                   std::to_string(r) + "]=" + std::to_string(ip[r]) + ")");
    if (ip[n_rows] != nnz)
      fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": indptr[-1] must equal nnz = " +
                                 std::to_string(nnz) + ", got indptr[" + std::to_string(n_rows) +
                                 "]=" + std::to_string(ip[n_rows]));
    if (nnz > 0) {
      int64_t bad = 0, first_bad = -1;
      for (int64_t j = 0; j < nnz; ++j) {
        const int64_t c = integer_at(ix_e, j);
        if (c < 0 || c >= n_cols) {
          if (first_bad < 0) first_bad = j;
          ++bad;
        }
      }
      if (bad)
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": column index out of range: indices[" +
                                   std::to_string(first_bad) + "]=" +
                                   std::to_string(integer_at(ix_e, first_bad)) + " in row " +
                                   std::to_string(row_of(ip, first_bad)) + " is outside [0, " +
                                   std::to_string(n_cols) + ") (" + std::to_string(bad) +
                                   " such entries)");
      // Python reports an unsorted pair before a duplicate one, whichever comes first.
      int64_t unsorted = -1, duplicate = -1;
      for (int64_t r = 0; r < n_rows && unsorted < 0; ++r)
        for (int64_t j = ip[r]; j + 1 < ip[r + 1]; ++j) {
          const int64_t a = integer_at(ix_e, j), b = integer_at(ix_e, j + 1);
          if (a > b) {
            unsorted = j;
            break;
          }
          if (a == b && duplicate < 0) duplicate = j;
        }
      if (unsorted >= 0)
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": column indices must be sorted within "
                                                   "each row (row " +
                                   std::to_string(row_of(ip, unsorted)) + " has indices[" +
                                   std::to_string(unsorted) + "]=" +
                                   std::to_string(integer_at(ix_e, unsorted)) + " > indices[" +
                                   std::to_string(unsorted + 1) + "]=" +
                                   std::to_string(integer_at(ix_e, unsorted + 1)) +
                                   "); sort each row's (index, value) pairs");
      if (duplicate >= 0)
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": duplicate column index " +
                                   std::to_string(integer_at(ix_e, duplicate)) + " in row " +
                                   std::to_string(row_of(ip, duplicate)) + " (indices[" +
                                   std::to_string(duplicate) + "] == indices[" +
                                   std::to_string(duplicate + 1) +
                                   "]); each (row, column) may be stored once");
      int64_t count = 0;
      double value = 0;
      const int64_t j = first_non_finite(va_e, &count, &value);
      if (j >= 0)
        fail(LTH_ERR_BAD_FILE, where + ": " + lw + ": values must be finite; " +
                                   std::to_string(count) + " are not (first: values[" +
                                   std::to_string(j) + "]=" + float_text(value) + " at row " +
                                   std::to_string(row_of(ip, j)) + ", column " +
                                   std::to_string(integer_at(ix_e, j)) + ")");
    }

    // ---- the metadata's own record of the layer
    const std::pair<const char*, json> recorded_fields[] = {
        {"nnz", json(nnz)}, {"indptr_dtype", json(ip_t)}, {"index_dtype", json(ix_t)},
        {"value_dtype", json(va_t)}};
    for (const auto& f : recorded_fields) {
      const json recorded = doc.contains(f.first) ? doc[f.first] : json(nullptr);
      if (recorded != f.second)
        fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + ": metadata " + f.first +
                                   " = " + recorded.dump() + " but the tensors give " +
                                   f.second.dump());
    }
    const Entry* bias_e = has_bias ? parts["bias"].entry : nullptr;
    if (bias_e) {
      if (!(bias_e->shape.size() == 1 && bias_e->shape[0] == n_rows))
        fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + ": bias must have shape (" +
                                   std::to_string(n_rows) + ",) to match the weight's " +
                                   std::to_string(n_rows) + " rows, got " +
                                   shape_text(bias_e->shape, true));
      if (!is_float(parts["bias"].logical))
        fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + ": bias dtype must be float32, "
                                   "float16, bfloat16 or float64, got " + parts["bias"].logical);
      int64_t count = 0;
      double value = 0;
      if (first_non_finite(*bias_e, &count, &value) >= 0)
        fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + ": bias values must be finite");
    }
    if (!out.layers.empty() && n_cols != out.layers.back().n_out)
      fail(LTH_ERR_BAD_FILE, where + ": layer " + squote(name) + " takes " +
                                 std::to_string(n_cols) + " inputs but layer " +
                                 squote(out.layers.back().name) + " produces " +
                                 std::to_string(out.layers.back().n_out) +
                                 " outputs; the layers do not chain");

    // ---- this runtime's limits (the engine indexes rows and columns with int32)
    if (n_rows >= kInt32Limit || n_cols >= kInt32Limit || nnz >= kInt32Limit)
      fail(LTH_ERR_UNSUPPORTED,
           where + ": layer " + squote(name) + " has shape [" + std::to_string(n_rows) + ", " +
               std::to_string(n_cols) + "] and " + std::to_string(nnz) +
               " nonzeros; this runtime supports at most 2147483647 rows, columns and nonzeros "
               "per layer");

    // ---- convert to what the engine takes
    LoadedLayer L;
    L.name = name;
    L.n_out = n_rows;
    L.n_in = n_cols;
    L.nnz = nnz;
    L.has_bias = has_bias;
    L.index_dtype = ix_t;
    L.value_dtype = va_t;
    L.indptr.assign(ip.begin(), ip.end());  // every entry in [0, nnz] < 2^31
    if (ix_t == "uint16") {
      L.indices_u16.resize(static_cast<size_t>(nnz));
      for (int64_t j = 0; j < nnz; ++j) L.indices_u16[j] = load<uint16_t>(ix_e.bytes, j);
    } else {
      L.indices_i32.resize(static_cast<size_t>(nnz));
      for (int64_t j = 0; j < nnz; ++j)
        L.indices_i32[j] = static_cast<int32_t>(integer_at(ix_e, j));  // < n_cols < 2^31
    }
    const bool bf16_values = va_t == "bfloat16" && va_e.dtype->size == 4;
    L.values = to_float32(va_e, bf16_values);
    if (bias_e) L.bias = to_float32(*bias_e, parts["bias"].logical == "bfloat16" && bias_e->dtype->size == 4);
    for (const std::vector<float>* v : {&L.values, &L.bias})
      for (float f : *v)
        if (!std::isfinite(f))
          fail(LTH_ERR_UNSUPPORTED, where + ": layer " + squote(name) +
                                        " holds float64 values beyond the float32 range; this "
                                        "runtime computes in float32");
    out.weights += n_rows * n_cols;  // each term < 2^62; the number of layers is small
    if (out.weights < 0)
      fail(LTH_ERR_UNSUPPORTED, where + ": the ticket's dense weight count overflows int64");
    out.layers.push_back(std::move(L));
  }

  std::vector<std::string> unexpected;
  for (auto& kv : entries)
    if (!claimed.count(kv.first)) unexpected.push_back(kv.first);
  if (!unexpected.empty()) {
    std::string names;
    for (size_t i = 0; i < unexpected.size(); ++i) names += (i ? ", " : "") + unexpected[i];
    fail(LTH_ERR_BAD_FILE, where + ": unexpected tensors not described by the metadata: " + names);
  }
  std::vector<int64_t> actual{out.layers.front().n_in};
  for (const LoadedLayer& l : out.layers) actual.push_back(l.n_out);
  if (sizes != json(actual))
    fail(LTH_ERR_BAD_FILE, where + ": metadata architecture sizes " + sizes.dump() +
                               " disagree with the layers' shapes " + shape_text(actual, false));
  return out;
}

// metadata.metadata.input, as lth_sparse/export.py writes it. Optional: a ticket without it
// loads, and a malformed one is reported only when a caller asks for the preprocessing.
InputSpec read_input_spec(const json& meta, int64_t n_in) {
  InputSpec spec;
  spec.flatten = n_in;
  if (!meta.contains("metadata") || !meta["metadata"].is_object() ||
      !meta["metadata"].contains("input") || meta["metadata"]["input"].is_null())
    return spec;
  const json& in = meta["metadata"]["input"];
  auto bad = [&](const std::string& why) {
    InputSpec s;
    s.flatten = n_in;
    s.error = "the ticket's metadata.input is malformed (" + why + ")";
    return s;
  };
  if (!in.is_object()) return bad("not an object");
  int64_t flatten = n_in;
  if (in.contains("flatten") && !(as_int64(in["flatten"], &flatten) && flatten == n_in))
    return bad("flatten must equal the first layer's " + std::to_string(n_in) + " inputs");
  double scale = 1.0;
  if (in.contains("scale")) {
    if (!in["scale"].is_number()) return bad("scale must be a number");
    scale = in["scale"].get<double>();
    if (!(std::isfinite(scale) && scale > 0)) return bad("scale must be finite and > 0");
  }
  spec.has_input = true;
  spec.flatten = flatten;
  spec.scale = scale;
  if (in.contains("normalize") && !in["normalize"].is_null()) {
    const json& n = in["normalize"];
    if (!(n.is_object() && n.contains("mean") && n["mean"].is_number() && n.contains("std") &&
          n["std"].is_number()))
      return bad("normalize must be {\"mean\": number, \"std\": number} or null");
    spec.mean = n["mean"].get<double>();
    spec.std = n["std"].get<double>();
    if (!(std::isfinite(spec.mean) && std::isfinite(spec.std) && spec.std > 0))
      return bad("normalize.mean must be finite and normalize.std finite and > 0");
    spec.has_normalize = true;
  }
  return spec;
}

}  // namespace

LoadedTicket load_ticket_file(const std::string& path) {
  Reader reader;
  reader.where = "ticket '" + path + "'";
  reader.data = read_whole_file(path, reader.where);
  reader.read_safetensors();
  LoadedTicket ticket = reader.build_layers();
  ticket.metadata_json = reader.metadata_text;
  ticket.input = read_input_spec(reader.metadata, ticket.layers.front().n_in);
  return ticket;
}

}  // namespace lth_ticket_rt
