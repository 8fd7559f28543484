/* Checks of the C API contract that only C can exercise, run by tests/test_runtime.py:
 *
 *   lth_ticket_api_test TICKET
 *
 * - argument errors: NULL pointers, negative batch, bad thread counts, layer index out of
 *   range each return their status with a message, and leave *out NULL;
 * - batch 0 writes nothing (NULL buffers allowed), an output row is written completely
 *   (NaN-prefilled);
 * - thread safety: 4 POSIX threads run forward on one handle at once, each with its own batch
 *   size, while the main thread changes the thread count; every result is compared with a
 *   single-threaded reference.
 * Prints "max_abs_diff <x>" (the Python test compares it with its tolerance table) and exits
 * 0, or prints "FAIL <what>" and exits 1.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lth_ticket.h"

static int failures = 0;

#define CHECK(cond, what)                      \
  do {                                         \
    if (!(cond)) {                             \
      printf("FAIL %s (line %d)\n", what, __LINE__); \
      ++failures;                              \
    }                                          \
  } while (0)

/* An error must carry a status and a non-empty message; frees it. */
/* `errp` is read after the call that fills it: an argument would be read in unspecified order. */
static void expect_error(lth_status got, lth_error** errp, lth_status want, const char* what) {
  lth_error* err = *errp;
  CHECK(got == want, what);
  CHECK(err != NULL && lth_error_status(err) == want && strlen(lth_error_message(err)) > 0, what);
  lth_error_free(err);
  *errp = NULL;
}

enum { kThreads = 4, kRounds = 20, kMaxBatch = 67 };

typedef struct {
  const lth_ticket* ticket;
  int64_t batch, n_in, n_out;
  const float* x;
  const float* want;
  double max_diff;
  int failed;
} Job;

static void* worker(void* arg) {
  Job* job = (Job*)arg;
  float* y = malloc(sizeof(float) * (size_t)(job->batch * job->n_out));
  int r;
  int64_t i;
  for (r = 0; r < kRounds && y; ++r) {
    lth_error* err = NULL;
    if (lth_ticket_forward(job->ticket, job->x, job->batch, y, &err) != LTH_OK) {
      printf("FAIL concurrent forward: %s\n", lth_error_message(err));
      lth_error_free(err);
      job->failed = 1;
      break;
    }
    for (i = 0; i < job->batch * job->n_out; ++i) {
      double d = fabs((double)y[i] - (double)job->want[i]);
      if (!(d <= job->max_diff)) job->max_diff = isnan(d) ? INFINITY : d;
    }
  }
  if (!y) job->failed = 1;
  free(y);
  return NULL;
}

int main(int argc, char** argv) {
  lth_ticket* t = (lth_ticket*)0x1;
  lth_error* err = NULL;
  lth_ticket_info info;
  lth_ticket_layer_info layer;
  float *x, *want, *y;
  int64_t i, n;
  double max_diff = 0;
  pthread_t threads[kThreads];
  Job jobs[kThreads];
  int k;

  if (argc != 2) {
    fprintf(stderr, "usage: lth_ticket_api_test TICKET\n");
    return 2;
  }
  /* ---- argument errors */
  expect_error(lth_ticket_open(NULL, &t, &err), &err, LTH_ERR_INVALID_ARGUMENT, "open(NULL path)");
  CHECK(t == NULL, "open failure leaves *out NULL");
  t = (lth_ticket*)0x1;
  err = NULL;
  expect_error(lth_ticket_open("/nonexistent/ticket.safetensors", &t, &err), &err, LTH_ERR_IO,
               "open(missing file)");
  CHECK(t == NULL, "open failure leaves *out NULL");
  CHECK(lth_ticket_open("/nonexistent", &t, NULL) == LTH_ERR_IO, "errors without an err pointer");
  CHECK(strcmp(lth_error_message(NULL), "") == 0 && lth_error_status(NULL) == LTH_OK, "NULL error");
  lth_error_free(NULL);
  lth_ticket_close(NULL);
  err = NULL;
  expect_error(lth_ticket_forward(NULL, NULL, 1, NULL, &err), &err, LTH_ERR_INVALID_ARGUMENT,
               "forward(NULL ticket)");

  if (lth_ticket_open(argv[1], &t, &err) != LTH_OK) {
    printf("FAIL open %s: %s\n", argv[1], lth_error_message(err));
    lth_error_free(err);
    return 1;
  }
  err = (lth_error*)0x1;
  CHECK(lth_ticket_get_info(t, &info, &err) == LTH_OK && err == NULL, "success clears *err");
  CHECK(info.n_in > 0 && info.n_out > 0 && info.n_layers > 0 && info.nnz >= 0, "info sizes");
  CHECK(info.sparsity >= 0 && info.sparsity <= 1, "info sparsity");
  CHECK(info.metadata_json && strstr(info.metadata_json, "\"lth_sparse.ticket\""), "info metadata");
  CHECK(lth_ticket_get_layer_info(t, 0, &layer, NULL) == LTH_OK && layer.n_in == info.n_in,
        "layer 0 info");
  CHECK(lth_ticket_get_layer_info(t, info.n_layers - 1, &layer, NULL) == LTH_OK &&
            layer.n_out == info.n_out, "last layer info");
  err = NULL;
  expect_error(lth_ticket_get_layer_info(t, info.n_layers, &layer, &err), &err,
               LTH_ERR_INVALID_ARGUMENT, "layer index out of range");
  err = NULL;
  expect_error(lth_ticket_set_threads(t, -1, &err), &err, LTH_ERR_INVALID_ARGUMENT,
               "set_threads(-1)");
  err = NULL;
  expect_error(lth_ticket_forward(t, NULL, -1, NULL, &err), &err, LTH_ERR_INVALID_ARGUMENT,
               "forward(batch -1)");
  err = NULL;
  expect_error(lth_ticket_forward(t, NULL, 2, NULL, &err), &err, LTH_ERR_INVALID_ARGUMENT,
               "forward(NULL buffers)");
  CHECK(lth_ticket_forward(t, NULL, 0, NULL, NULL) == LTH_OK, "batch 0 with NULL buffers");

  /* ---- a single-threaded reference */
  n = kMaxBatch;
  x = malloc(sizeof(float) * (size_t)(n * info.n_in));
  want = malloc(sizeof(float) * (size_t)(n * info.n_out));
  y = malloc(sizeof(float) * (size_t)(n * info.n_out));
  if (!x || !want || !y) {
    printf("FAIL out of memory\n");
    return 1;
  }
  srand(12345);
  for (i = 0; i < n * info.n_in; ++i) x[i] = (float)rand() / (float)RAND_MAX;
  for (i = 0; i < n * info.n_out; ++i) want[i] = NAN;  /* catches unwritten outputs */
  CHECK(lth_ticket_set_threads(t, 1, NULL) == LTH_OK, "set_threads(1)");
  CHECK(lth_ticket_forward(t, x, n, want, NULL) == LTH_OK, "reference forward");
  for (i = 0; i < n * info.n_out; ++i) CHECK(!isnan(want[i]), "every output written");
  /* Each row alone gives what it gives inside the batch. */
  for (i = 0; i < n; i += 13) {
    int64_t j;
    CHECK(lth_ticket_forward(t, x + i * info.n_in, 1, y, NULL) == LTH_OK, "batch-1 forward");
    for (j = 0; j < info.n_out; ++j) {
      double d = fabs((double)y[j] - (double)want[i * info.n_out + j]);
      if (!(d <= max_diff)) max_diff = isnan(d) ? INFINITY : d;
    }
  }

  /* ---- several threads on one handle, while the thread count changes under them */
  CHECK(lth_ticket_set_threads(t, 0, NULL) == LTH_OK, "set_threads(0)");
  for (k = 0; k < kThreads; ++k) {
    jobs[k].ticket = t;
    jobs[k].batch = 1 + (k * 23) % kMaxBatch;  /* 1, 24, 47, 3: different buffer sizes */
    jobs[k].n_in = info.n_in;
    jobs[k].n_out = info.n_out;
    jobs[k].x = x;
    jobs[k].want = want;
    jobs[k].max_diff = 0;
    jobs[k].failed = 0;
    if (pthread_create(&threads[k], NULL, worker, &jobs[k]) != 0) {
      printf("FAIL pthread_create\n");
      return 1;
    }
  }
  for (k = 0; k < 50; ++k) lth_ticket_set_threads(t, 1 + k % 2, NULL);
  for (k = 0; k < kThreads; ++k) {
    pthread_join(threads[k], NULL);
    CHECK(!jobs[k].failed, "concurrent forward");
    if (!(jobs[k].max_diff <= max_diff)) max_diff = jobs[k].max_diff;
  }
  lth_ticket_close(t);
  free(x);
  free(want);
  free(y);
  printf("max_abs_diff %.9g\n", max_diff);
  if (failures) printf("%d checks failed\n", failures);
  return failures ? 1 : 0;
}
