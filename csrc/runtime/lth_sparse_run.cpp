// lth-sparse-run: run a ticket file on a .npy input, print its description, or time it.
// Uses only the public C API (include/lth_ticket.h), as any deployment would.
//
// Exit codes: 0 success; 2 a problem the user can fix (bad arguments, bad or unsupported
// ticket, bad input file), with one line on stderr; 1 out of memory or an internal error.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "lth_ticket.h"
#include "npy.h"

namespace {

const char* kUsage =
    "usage: lth-sparse-run TICKET --input X.npy --output Y.npy [--threads N]\n"
    "       lth-sparse-run TICKET --info | --metadata\n"
    "       lth-sparse-run TICKET --bench [--batch 1,16,256] [--repeats R] [--threads N]\n"
    "                                     [--input X.npy]\n"
    "\n"
    "Runs an lth_sparse ticket file (safetensors, from `lth-sparse export`) without Python.\n"
    "  --input X.npy   float32 (N, n_in) samples (any (N, ...) shape holding n_in values per\n"
    "                  sample), or uint8 raw images, preprocessed as the ticket's metadata\n"
    "                  says (scale, then mean/std normalisation)\n"
    "  --output Y.npy  float32 (N, n_out) logits, written atomically\n"
    "  --threads N     threads per forward (default: the OpenMP default, OMP_NUM_THREADS)\n"
    "  --info          print the architecture, layers, sparsity and input preprocessing\n"
    "  --metadata      print the ticket's JSON metadata document\n"
    "  --bench         time forward calls; prints one JSON line per batch size with\n"
    "                  median_us (the median microseconds per forward call)\n"
    "  --batch LIST    comma-separated batch sizes for --bench (default 1,16,256)\n"
    "  --repeats R     timed calls per batch size (default 200), after R/10 + 3 warm-up calls\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failed C API call: the message and whether the user can fix it (exit 2) or not (exit 1).
struct ApiError : std::runtime_error {
  ApiError(lth_status s, const std::string& m) : std::runtime_error(m), status(s) {}
  lth_status status;
};

// `err` by reference: it is read after the call that fills it (a by-value argument could be
// read before, argument evaluation order being unspecified).
void check(lth_status st, lth_error*& err) {
  if (st == LTH_OK) return;
  std::string msg = lth_error_message(err);
  lth_error_free(err);
  err = nullptr;
  throw ApiError(st, msg.empty() ? "lth_ticket call failed with status " + std::to_string(st) : msg);
}

struct TicketCloser {
  void operator()(lth_ticket* t) const { lth_ticket_close(t); }
};
using TicketPtr = std::unique_ptr<lth_ticket, TicketCloser>;

int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
    throw UsageError(flag + " must be an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + text + "'");
  return v;
}

struct Options {
  std::string ticket, input, output;
  bool info = false, metadata = false, bench = false;
  int threads = 0;
  std::vector<int64_t> batches{1, 16, 256};
  int64_t repeats = 200;
};

Options parse_args(int argc, char** argv) {
  Options o;
  bool batch_given = false, repeats_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--input") o.input = value();
    else if (a == "--output") o.output = value();
    else if (a == "--threads") o.threads = static_cast<int>(parse_int(a, value(), 1, 4096));
    else if (a == "--info") o.info = true;
    else if (a == "--metadata") o.metadata = true;
    else if (a == "--bench") o.bench = true;
    else if (a == "--repeats") {
      o.repeats = parse_int(a, value(), 1, 100000000);
      repeats_given = true;
    } else if (a == "--batch") {
      o.batches.clear();
      std::string list = value(), item;
      size_t start = 0;
      while (start <= list.size()) {
        size_t comma = list.find(',', start);
        if (comma == std::string::npos) comma = list.size();
        o.batches.push_back(parse_int("--batch", list.substr(start, comma - start), 1, 10000000));
        start = comma + 1;
      }
      batch_given = true;
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option '" + a + "'");
    } else if (o.ticket.empty()) {
      o.ticket = a;
    } else {
      throw UsageError("unexpected argument '" + a + "' (one TICKET only)");
    }
  }
  if (o.ticket.empty()) throw UsageError("give the ticket file to run");
  if ((batch_given || repeats_given) && !o.bench)
    throw UsageError("--batch and --repeats go with --bench");
  const int modes = int(o.info) + int(o.metadata) + int(o.bench) + int(!o.output.empty());
  if (modes == 0)
    throw UsageError("say what to do: --input X.npy --output Y.npy, --info, --metadata or --bench");
  if (modes > 1) throw UsageError("choose one of --output, --info, --metadata and --bench");
  if (!o.output.empty() && o.input.empty()) throw UsageError("--output needs --input X.npy");
  if (!o.input.empty() && o.output.empty() && !o.bench)
    throw UsageError("--input needs --output Y.npy (or --bench)");
  return o;
}

// The input as (batch, n_in) float32, preprocessing uint8 images as the ticket says.
std::vector<float> load_input(const std::string& path, const lth_ticket* t, int64_t n_in,
                              int64_t* batch) {
  using lth_ticket_rt::NpyArray;
  NpyArray a = lth_ticket_rt::read_npy(path);
  const std::string where = "input '" + path + "'";
  if (a.shape.empty()) throw UsageError(where + " is a scalar; give an (N, " + std::to_string(n_in) + ") array");
  int64_t per_sample = 1;
  for (size_t i = 1; i < a.shape.size(); ++i) per_sample *= a.shape[i];  // numel fits: checked
  if (a.shape.size() == 1) per_sample = a.shape[0];
  if (per_sample != n_in) {
    std::string shape;
    for (size_t i = 0; i < a.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(a.shape[i]);
    throw UsageError(where + " has shape (" + shape + "): " + std::to_string(per_sample) +
                     " values per sample, but the ticket takes " + std::to_string(n_in) +
                     "; give (N, " + std::to_string(n_in) + ")");
  }
  *batch = a.shape.size() == 1 ? 1 : a.shape[0];
  std::vector<float> x(static_cast<size_t>(a.numel));
  if (a.dtype == NpyArray::DType::kFloat32) {
    std::memcpy(x.data(), a.bytes.data(), a.bytes.size());
  } else if (a.dtype == NpyArray::DType::kFloat64) {
    for (int64_t i = 0; i < a.numel; ++i) {
      double d;
      std::memcpy(&d, a.bytes.data() + 8 * i, 8);
      x[static_cast<size_t>(i)] = static_cast<float>(d);
    }
  } else {
    lth_ticket_input in;
    lth_error* err = nullptr;
    check(lth_ticket_get_input(t, &in, &err), err);
    if (!in.has_input)
      throw UsageError(where + " holds uint8 images but the ticket records no input "
                       "preprocessing (metadata.input); give float32 input as the model expects");
    check(lth_ticket_preprocess_u8(t, a.bytes.data(), a.numel, x.data(), &err), err);
  }
  return x;
}

void print_info(const std::string& path, const lth_ticket* t) {
  lth_ticket_info info;
  lth_error* err = nullptr;
  check(lth_ticket_get_info(t, &info, &err), err);
  std::printf("ticket: %s\n", path.c_str());
  std::printf("runtime: lth_ticket %s\n", lth_ticket_version());
  std::string arch = std::to_string(info.n_in);
  std::vector<lth_ticket_layer_info> layers(static_cast<size_t>(info.n_layers));
  for (int64_t i = 0; i < info.n_layers; ++i) {
    check(lth_ticket_get_layer_info(t, i, &layers[i], &err), err);
    arch += " -> " + std::to_string(layers[i].n_out);
  }
  std::printf("architecture: %s (relu between layers)\n", arch.c_str());
  std::printf("layers:\n");
  for (const lth_ticket_layer_info& l : layers) {
    const double dense = static_cast<double>(l.n_out) * static_cast<double>(l.n_in);
    std::printf("  %-10s %lld x %lld  nnz %lld  (%.2f%% sparse)  indices %s  values %s  bias %s\n",
                l.name, static_cast<long long>(l.n_out), static_cast<long long>(l.n_in),
                static_cast<long long>(l.nnz), 100.0 * (1.0 - l.nnz / dense), l.index_dtype,
                l.value_dtype, l.has_bias ? "yes" : "no");
  }
  std::printf("totals: nnz %lld of %lld weights (%.2f%% sparse)\n",
              static_cast<long long>(info.nnz), static_cast<long long>(info.weights),
              100.0 * info.sparsity);
  lth_ticket_input in;
  lth_status st = lth_ticket_get_input(t, &in, &err);
  if (st != LTH_OK) {
    std::printf("input: %s\n", lth_error_message(err));
    lth_error_free(err);
  } else if (!in.has_input) {
    std::printf("input: float32 (N, %lld); the ticket records no preprocessing\n",
                static_cast<long long>(info.n_in));
  } else if (in.has_normalize) {
    std::printf("input: uint8 pixels * %.10g, then (x - %.10g) / %.10g\n", in.scale, in.mean, in.std);
  } else {
    std::printf("input: uint8 pixels * %.10g\n", in.scale);
  }
}

// Deterministic inputs in [0, 1) for --bench without --input (no libc rand state).
void fill_uniform(std::vector<float>& x) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (float& v : x) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    v = static_cast<float>(s >> 40) / static_cast<float>(1 << 24);
  }
}

void bench(const Options& o, const lth_ticket* t, const std::vector<float>& input, int64_t input_rows) {
  lth_ticket_info info;
  lth_error* err = nullptr;
  check(lth_ticket_get_info(t, &info, &err), err);
  for (int64_t batch : o.batches) {
    // Refuse before allocating: --bench buffers are batch * (n_in + n_out) floats.
    const double bytes = 4.0 * static_cast<double>(batch) * static_cast<double>(info.n_in + info.n_out);
    if (bytes > 8.0 * (1ull << 30))
      throw UsageError("--batch " + std::to_string(batch) + " needs " +
                       std::to_string(static_cast<long long>(bytes / (1 << 20))) +
                       " MiB of buffers for this ticket; the limit is 8 GiB");
    std::vector<float> x(static_cast<size_t>(batch * info.n_in)), y(static_cast<size_t>(batch * info.n_out));
    if (input_rows > 0) {
      for (int64_t b = 0; b < batch; ++b)  // cycle through the given samples
        std::memcpy(&x[b * info.n_in], &input[(b % input_rows) * info.n_in], sizeof(float) * info.n_in);
    } else {
      fill_uniform(x);
    }
    const int64_t warmup = o.repeats / 10 + 3;
    for (int64_t i = 0; i < warmup; ++i) check(lth_ticket_forward(t, x.data(), batch, y.data(), &err), err);
    std::vector<double> us(static_cast<size_t>(o.repeats));
    for (int64_t i = 0; i < o.repeats; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      lth_status st = lth_ticket_forward(t, x.data(), batch, y.data(), &err);
      auto t1 = std::chrono::steady_clock::now();
      check(st, err);
      us[static_cast<size_t>(i)] = std::chrono::duration<double, std::micro>(t1 - t0).count();
    }
    std::sort(us.begin(), us.end());
    auto q = [&](double p) { return us[static_cast<size_t>(p * (us.size() - 1) + 0.5)]; };
    std::printf("{\"bench\": \"lth_ticket_forward\", \"batch\": %lld, \"threads\": %d, "
                "\"repeats\": %lld, \"median_us\": %.3f, \"min_us\": %.3f, \"p10_us\": %.3f, "
                "\"p90_us\": %.3f, \"n_in\": %lld, \"n_out\": %lld, \"nnz\": %lld}\n",
                static_cast<long long>(batch), o.threads, static_cast<long long>(o.repeats),
                q(0.5), us.front(), q(0.1), q(0.9), static_cast<long long>(info.n_in),
                static_cast<long long>(info.n_out), static_cast<long long>(info.nnz));
    std::fflush(stdout);
  }
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!std::strcmp(argv[i], "--version")) {
      std::printf("lth-sparse-run (lth_ticket %s)\n", lth_ticket_version());
      return 0;
    }
  }
  const Options o = parse_args(argc, argv);
  lth_ticket* raw = nullptr;
  lth_error* err = nullptr;
  check(lth_ticket_open(o.ticket.c_str(), &raw, &err), err);
  TicketPtr t(raw);
  if (o.threads > 0) check(lth_ticket_set_threads(t.get(), o.threads, &err), err);
  if (o.info) {
    print_info(o.ticket, t.get());
    return 0;
  }
  lth_ticket_info info;
  check(lth_ticket_get_info(t.get(), &info, &err), err);
  if (o.metadata) {
    std::printf("%s\n", info.metadata_json);
    return 0;
  }
  int64_t batch = 0;
  std::vector<float> x;
  if (!o.input.empty()) x = load_input(o.input, t.get(), info.n_in, &batch);
  if (o.bench) {
    bench(o, t.get(), x, batch);
    return 0;
  }
  std::vector<float> y(static_cast<size_t>(batch * info.n_out));
  check(lth_ticket_forward(t.get(), x.data(), batch, y.data(), &err), err);
  lth_ticket_rt::write_npy_f32(o.output, y.data(), batch, info.n_out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lth-sparse-run: error: %s (see lth-sparse-run --help)\n", e.what());
    return 2;
  } catch (const ApiError& e) {
    std::fprintf(stderr, "lth-sparse-run: error: %s\n", e.what());
    return (e.status == LTH_ERR_OUT_OF_MEMORY || e.status == LTH_ERR_INTERNAL) ? 1 : 2;
  } catch (const lth_ticket_rt::NpyError& e) {
    std::fprintf(stderr, "lth-sparse-run: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "lth-sparse-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lth-sparse-run: internal error: %s\n", e.what());
    return 1;
  }
}
