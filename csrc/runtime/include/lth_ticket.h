/* lth_ticket: run an lth_sparse ticket file (a sparse MLP in CSR, safetensors) without Python.
 *
 * Shape of the API (after ONNX Runtime's C API):
 *   - lth_ticket is an opaque handle: lth_ticket_open() reads and fully validates a ticket file
 *     (format, version, layer chain, shapes, dtypes, CSR invariants, finite values, the sha256 of
 *     every tensor) and lth_ticket_close() releases it. After open the network is immutable, and
 *     lth_ticket_forward() may be called from several threads at once on one handle.
 *   - Every call that can fail returns an lth_status (LTH_OK = 0) and, when `err` is not NULL,
 *     stores a heap-allocated lth_error in *err carrying one message that names the problem and
 *     the fix; free it with lth_error_free(). On success *err is set to NULL.
 *   - The caller owns every input and output buffer; the library never keeps a caller pointer.
 *
 * Minimal use:
 *   lth_ticket* t = NULL; lth_error* err = NULL;
 *   if (lth_ticket_open("ticket.safetensors", &t, &err) != LTH_OK) {
 *     fprintf(stderr, "%s\n", lth_error_message(err)); lth_error_free(err); return 1;
 *   }
 *   lth_ticket_info info; lth_ticket_get_info(t, &info);       // n_in, n_out, nnz, ...
 *   float* y = malloc(sizeof(float) * batch * info.n_out);
 *   lth_ticket_forward(t, x, batch, y, &err);                  // x: (batch, n_in) fp32
 *   lth_ticket_close(t);
 *
 * Link with -llth_ticket (pkg-config --cflags --libs lth_ticket, or CMake
 * find_package(lth_ticket) + target_link_libraries(app PRIVATE lth_ticket::lth_ticket)).
 */
#ifndef LTH_TICKET_H_
#define LTH_TICKET_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define LTH_TICKET_API
#else
#define LTH_TICKET_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a declaration below changes incompatibly. */
#define LTH_TICKET_API_VERSION 1

typedef enum lth_status {
  LTH_OK = 0,
  LTH_ERR_INVALID_ARGUMENT = 1, /* a NULL handle/pointer, negative batch, bad thread count   */
  LTH_ERR_IO = 2,               /* the file is missing, a directory, or cannot be read         */
  LTH_ERR_BAD_FILE = 3,         /* not a ticket, truncated, corrupt, fails a check             */
  LTH_ERR_UNSUPPORTED = 4,      /* a valid ticket this runtime cannot run (newer version, npz,  */
                                /* sizes beyond the runtime's limits)                          */
  LTH_ERR_OUT_OF_MEMORY = 5,
  LTH_ERR_INTERNAL = 6
} lth_status;

typedef struct lth_ticket lth_ticket;
typedef struct lth_error lth_error;

/* The message of an error (valid until lth_error_free); "" for NULL. */
LTH_TICKET_API const char* lth_error_message(const lth_error* err);
/* The status an error was returned with; LTH_OK for NULL. */
LTH_TICKET_API lth_status lth_error_status(const lth_error* err);
LTH_TICKET_API void lth_error_free(lth_error* err);

/* The library's version string, e.g. "0.1.0"; static storage. */
LTH_TICKET_API const char* lth_ticket_version(void);

/* Read, validate and prepare the ticket at `path` (safetensors ticket file).
 * On success *out is a new handle (close it with lth_ticket_close); on failure *out is NULL. */
LTH_TICKET_API lth_status lth_ticket_open(const char* path, lth_ticket** out, lth_error** err);

/* Release a handle (NULL is allowed). No forward call may be running on it. */
LTH_TICKET_API void lth_ticket_close(lth_ticket* ticket);

/* y (batch, n_out) = the network applied to x (batch, n_in); both fp32, row-major, contiguous,
 * caller-owned, not overlapping. batch >= 0 (0 writes nothing; x and y may then be NULL).
 * Thread-safe: several threads may run forward on one handle at once. */
LTH_TICKET_API lth_status lth_ticket_forward(const lth_ticket* ticket, const float* x,
                                             int64_t batch, float* y, lth_error** err);

/* Threads each forward call uses: n >= 1, or 0 for the OpenMP default (OMP_NUM_THREADS or
 * the number of cores). Atomic: a forward already running keeps the count it started with. */
LTH_TICKET_API lth_status lth_ticket_set_threads(lth_ticket* ticket, int threads,
                                                 lth_error** err);

typedef struct lth_ticket_info {
  int64_t n_in;       /* features the first layer takes */
  int64_t n_out;      /* outputs of the last layer (logits) */
  int64_t n_layers;
  int64_t nnz;        /* stored weights, all layers */
  int64_t weights;    /* dense weight count sum(n_out * n_in), all layers */
  double sparsity;    /* 1 - nnz / weights */
  int threads;        /* as set by lth_ticket_set_threads (0 = OpenMP default) */
  /* The ticket's JSON metadata document (format, architecture, layers, totals, created_by,
   * metadata), NUL-terminated; owned by the handle, valid until lth_ticket_close. */
  const char* metadata_json;
} lth_ticket_info;

LTH_TICKET_API lth_status lth_ticket_get_info(const lth_ticket* ticket, lth_ticket_info* info,
                                              lth_error** err);

typedef struct lth_ticket_layer_info {
  const char* name;   /* e.g. "fc1"; owned by the handle */
  int64_t n_out, n_in, nnz;
  int has_bias;
  const char* index_dtype; /* as stored in the file: "uint16", "int32" or "int64" */
  const char* value_dtype; /* as stored: "float32", "float16", "bfloat16" or "float64" */
} lth_ticket_layer_info;

/* Layer `index` in [0, n_layers), input to output. */
LTH_TICKET_API lth_status lth_ticket_get_layer_info(const lth_ticket* ticket, int64_t index,
                                                    lth_ticket_layer_info* info,
                                                    lth_error** err);

/* What to do to a raw uint8 image before the first layer, from metadata.input (written by
 * `lth-sparse export`): x = pixel * scale, then (x - mean) / std when has_normalize.
 * has_input is 0 when the ticket records no preprocessing (then the other fields are
 * scale = 1, has_normalize = 0, flatten = n_in). */
typedef struct lth_ticket_input {
  int has_input;
  int64_t flatten;    /* features per sample after flattening */
  double scale;
  int has_normalize;
  double mean, std;
} lth_ticket_input;

LTH_TICKET_API lth_status lth_ticket_get_input(const lth_ticket* ticket, lth_ticket_input* input,
                                               lth_error** err);

/* Apply the ticket's input preprocessing to `count` uint8 pixels (count = batch * n_in),
 * writing fp32 into `out` (caller-owned, `count` floats): the same arithmetic as the Python
 * data pipeline (fp32: pixel / (1 / scale), then (x - mean) / std). */
LTH_TICKET_API lth_status lth_ticket_preprocess_u8(const lth_ticket* ticket, const uint8_t* pixels,
                                                   int64_t count, float* out, lth_error** err);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LTH_TICKET_H_ */
