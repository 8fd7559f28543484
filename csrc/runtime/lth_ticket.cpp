// The C API of include/lth_ticket.h over the ticket loader and the whole-network engine.
// No exception crosses the C boundary: every entry point catches and turns it into a status.
#include "lth_ticket.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "engine/sparse_mlp_engine.h"
#include "ticket_loader.h"

#ifndef LTH_TICKET_VERSION
#define LTH_TICKET_VERSION "0.0.0"
#endif

struct lth_error {
  lth_status status;
  std::string message;
};

struct lth_ticket {
  lth_ticket_rt::LoadedTicket loaded;  // the engine borrows these arrays: declared first
  std::unique_ptr<lth_sparse::engine::SparseMLPEngine> engine;
  std::atomic<int> threads{0};
};

namespace {

lth_status set_error(lth_error** err, lth_status status, const std::string& message) {
  if (err) {
    *err = nullptr;
    try {
      *err = new lth_error{status, message};
    } catch (...) {
      // No memory even for the message: the status alone still says what happened.
    }
  }
  return status;
}

lth_status ok(lth_error** err) {
  if (err) *err = nullptr;
  return LTH_OK;
}

// Runs `body` and turns any exception into a status + message.
template <typename F>
lth_status guarded(lth_error** err, const char* what, F&& body) {
  try {
    return body();
  } catch (const lth_ticket_rt::LoadError& e) {
    return set_error(err, e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(err, LTH_ERR_OUT_OF_MEMORY, std::string(what) + ": out of memory");
  } catch (const std::exception& e) {
    return set_error(err, LTH_ERR_INTERNAL, std::string(what) + ": " + e.what());
  } catch (...) {
    return set_error(err, LTH_ERR_INTERNAL, std::string(what) + ": unknown error");
  }
}

}  // namespace

extern "C" {

const char* lth_error_message(const lth_error* err) { return err ? err->message.c_str() : ""; }
lth_status lth_error_status(const lth_error* err) { return err ? err->status : LTH_OK; }
void lth_error_free(lth_error* err) { delete err; }

const char* lth_ticket_version(void) { return LTH_TICKET_VERSION; }

lth_status lth_ticket_open(const char* path, lth_ticket** out, lth_error** err) {
  if (out) *out = nullptr;
  if (!path || !out)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_open: path and out must not be NULL");
  return guarded(err, "lth_ticket_open", [&]() {
    std::unique_ptr<lth_ticket> t(new lth_ticket);
    t->loaded = lth_ticket_rt::load_ticket_file(path);
    using namespace lth_sparse::engine;
    std::vector<LayerView> views;
    const size_t n = t->loaded.layers.size();
    for (size_t i = 0; i < n; ++i) {
      const lth_ticket_rt::LoadedLayer& l = t->loaded.layers[i];
      LayerView v;
      v.n_out = l.n_out;
      v.n_in = l.n_in;
      v.nnz = l.nnz;
      v.indptr = l.indptr.data();
      if (l.index_dtype == "uint16") {
        v.indices = l.indices_u16.data();
        v.index_type = IndexType::kU16;
      } else {
        v.indices = l.indices_i32.data();
        v.index_type = IndexType::kI32;
      }
      v.values = l.values.data();
      v.bias = l.has_bias ? l.bias.data() : nullptr;
      v.relu = i + 1 < n;  // the ticket's activation between layers, none after the last
      views.push_back(v);
    }
    try {
      // A copying engine: it may keep extra layouts of a layer (the transposed copy its batch-1
      // path uses to skip zero or background inputs), which a borrowing engine cannot, since
      // borrowed arrays may change under it. The loader's arrays are then released.
      t->engine.reset(new SparseMLPEngine(views, Memory::kCopy));
    } catch (const std::invalid_argument& e) {
      // The loader checked everything the engine checks; reaching here is a bug.
      return set_error(err, LTH_ERR_INTERNAL,
                       std::string("lth_ticket_open: the engine refused a validated ticket: ") +
                           e.what());
    }
    for (lth_ticket_rt::LoadedLayer& l : t->loaded.layers) {
      std::vector<int32_t>().swap(l.indptr);
      std::vector<uint16_t>().swap(l.indices_u16);
      std::vector<int32_t>().swap(l.indices_i32);
      std::vector<float>().swap(l.values);
      std::vector<float>().swap(l.bias);
    }
    *out = t.release();
    return ok(err);
  });
}

void lth_ticket_close(lth_ticket* ticket) { delete ticket; }

lth_status lth_ticket_forward(const lth_ticket* ticket, const float* x, int64_t batch, float* y,
                              lth_error** err) {
  if (!ticket) return set_error(err, LTH_ERR_INVALID_ARGUMENT, "lth_ticket_forward: ticket is NULL");
  if (batch < 0)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_forward: batch must be >= 0, got " + std::to_string(batch));
  if (batch == 0) return ok(err);
  if (!x || !y)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_forward: x and y must not be NULL when batch > 0");
  const int64_t width = std::max(ticket->engine->n_in(), ticket->engine->n_out());
  if (batch > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(float)) / width)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_forward: batch " + std::to_string(batch) +
                         " times the row width overflows the address space");
  return guarded(err, "lth_ticket_forward", [&]() {
    ticket->engine->forward(x, batch, y, ticket->threads.load(std::memory_order_relaxed));
    return ok(err);
  });
}

lth_status lth_ticket_set_threads(lth_ticket* ticket, int threads, lth_error** err) {
  if (!ticket) return set_error(err, LTH_ERR_INVALID_ARGUMENT, "lth_ticket_set_threads: ticket is NULL");
  if (threads < 0)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_set_threads: threads must be >= 1, or 0 for the OpenMP default; "
                     "got " + std::to_string(threads));
  ticket->threads.store(threads, std::memory_order_relaxed);
  return ok(err);
}

lth_status lth_ticket_get_info(const lth_ticket* ticket, lth_ticket_info* info, lth_error** err) {
  if (!ticket || !info)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT, "lth_ticket_get_info: ticket and info must not be NULL");
  info->n_in = ticket->engine->n_in();
  info->n_out = ticket->engine->n_out();
  info->n_layers = ticket->engine->n_layers();
  info->nnz = ticket->engine->nnz();
  info->weights = ticket->loaded.weights;
  info->sparsity = 1.0 - static_cast<double>(info->nnz) / static_cast<double>(info->weights);
  info->threads = ticket->threads.load(std::memory_order_relaxed);
  info->metadata_json = ticket->loaded.metadata_json.c_str();
  return ok(err);
}

lth_status lth_ticket_get_layer_info(const lth_ticket* ticket, int64_t index,
                                     lth_ticket_layer_info* info, lth_error** err) {
  if (!ticket || !info)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_get_layer_info: ticket and info must not be NULL");
  const int64_t n = static_cast<int64_t>(ticket->loaded.layers.size());
  if (index < 0 || index >= n)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_get_layer_info: layer index " + std::to_string(index) +
                         " is outside [0, " + std::to_string(n) + ")");
  const lth_ticket_rt::LoadedLayer& l = ticket->loaded.layers[static_cast<size_t>(index)];
  info->name = l.name.c_str();
  info->n_out = l.n_out;
  info->n_in = l.n_in;
  info->nnz = l.nnz;
  info->has_bias = l.has_bias ? 1 : 0;
  info->index_dtype = l.index_dtype.c_str();
  info->value_dtype = l.value_dtype.c_str();
  return ok(err);
}

lth_status lth_ticket_get_input(const lth_ticket* ticket, lth_ticket_input* input,
                                lth_error** err) {
  if (!ticket || !input)
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_get_input: ticket and input must not be NULL");
  const lth_ticket_rt::InputSpec& s = ticket->loaded.input;
  if (!s.error.empty()) return set_error(err, LTH_ERR_BAD_FILE, s.error);
  input->has_input = s.has_input ? 1 : 0;
  input->flatten = s.flatten;
  input->scale = s.scale;
  input->has_normalize = s.has_normalize ? 1 : 0;
  input->mean = s.mean;
  input->std = s.std;
  return ok(err);
}

lth_status lth_ticket_preprocess_u8(const lth_ticket* ticket, const uint8_t* pixels,
                                    int64_t count, float* out, lth_error** err) {
  lth_ticket_input in;
  lth_status st = lth_ticket_get_input(ticket, &in, err);
  if (st != LTH_OK) return st;
  if (count < 0 || (count > 0 && (!pixels || !out)))
    return set_error(err, LTH_ERR_INVALID_ARGUMENT,
                     "lth_ticket_preprocess_u8: count must be >= 0 and pixels/out not NULL");
  // The Python pipeline divides by 255 in fp32 (not a multiply by 1/255: the two differ in
  // the last bit for some pixels), then subtracts the mean and divides by the std in fp32.
  const float divisor = static_cast<float>(1.0 / in.scale);
  const float mean = static_cast<float>(in.mean), std = static_cast<float>(in.std);
  for (int64_t i = 0; i < count; ++i) {
    float v = static_cast<float>(pixels[i]) / divisor;
    if (in.has_normalize) v = (v - mean) / std;
    out[i] = v;
  }
  return ok(err);
}

}  // extern "C"
