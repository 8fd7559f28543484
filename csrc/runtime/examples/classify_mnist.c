/* Classify MNIST test images with a ticket file, in C, through liblth_ticket.
 *
 *   classify_mnist TICKET IMAGES LABELS [--threads N]
 *   classify_mnist ticket.safetensors t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
 *
 * IMAGES and LABELS are the original (uncompressed) MNIST IDX files. Each image's uint8
 * pixels go through the preprocessing the ticket's metadata records (lth_ticket_preprocess_u8:
 * scale 1/255, then mean/std normalisation when the model was trained on normalised data),
 * the network runs in batches of 256, and the arg-max logit is the prediction.
 * Prints "accuracy A (C/N correct)"; exits 0, or 2 with one message when anything fails.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lth_ticket.h"

enum { kBatch = 256 };

static int fail(const char* what, lth_error* err) {
  fprintf(stderr, "classify_mnist: %s%s%s\n", what, err ? ": " : "", err ? lth_error_message(err) : "");
  lth_error_free(err);
  return 2;
}

static uint32_t be32(const unsigned char* p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads an IDX file whose header is `magic` followed by `ndims` big-endian sizes; the sizes
 * must account for every byte of the file, checked before the payload is allocated. */
static unsigned char* read_idx(const char* path, uint32_t magic, int ndims, uint32_t* dims) {
  FILE* f = fopen(path, "rb");
  unsigned char head[16];
  unsigned char* data = NULL;
  uint64_t count = 1;
  long size;
  int i;
  if (!f) {
    fprintf(stderr, "classify_mnist: cannot open %s\n", path);
    return NULL;
  }
  if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
      fread(head, 1, 4 + 4 * (size_t)ndims, f) != 4 + 4 * (size_t)ndims || be32(head) != magic) {
    fprintf(stderr, "classify_mnist: %s is not an MNIST IDX file (magic %u expected)\n", path, magic);
    fclose(f);
    return NULL;
  }
  for (i = 0; i < ndims; ++i) {
    dims[i] = be32(head + 4 + 4 * i);
    count *= dims[i];
  }
  if (count != (uint64_t)size - 4 - 4 * (uint64_t)ndims) {
    fprintf(stderr, "classify_mnist: %s: its header claims %llu bytes of data but the file holds %ld\n",
            path, (unsigned long long)count, size - 4 - 4 * (long)ndims);
    fclose(f);
    return NULL;
  }
  data = malloc(count ? (size_t)count : 1);
  if (!data || fread(data, 1, (size_t)count, f) != count) {
    fprintf(stderr, "classify_mnist: cannot read %s\n", path);
    free(data);
    data = NULL;
  }
  fclose(f);
  return data;
}

int main(int argc, char** argv) {
  lth_ticket* ticket = NULL;
  lth_error* err = NULL;
  lth_ticket_info info;
  uint32_t idims[3], ldims[1];
  unsigned char *images = NULL, *labels = NULL;
  float *x = NULL, *y = NULL;
  int64_t n, start, correct = 0, pixels;
  int threads = 0, rc = 2;

  if (!(argc == 4 || (argc == 6 && strcmp(argv[4], "--threads") == 0))) {
    fprintf(stderr, "usage: classify_mnist TICKET IMAGES LABELS [--threads N]\n");
    return 2;
  }
  if (argc == 6) threads = atoi(argv[5]);

  if (lth_ticket_open(argv[1], &ticket, &err) != LTH_OK) return fail("cannot open the ticket", err);
  if (lth_ticket_set_threads(ticket, threads, &err) != LTH_OK) {
    rc = fail("bad --threads", err);
    goto done;
  }
  lth_ticket_get_info(ticket, &info, NULL);

  images = read_idx(argv[2], 2051, 3, idims);
  labels = read_idx(argv[3], 2049, 1, ldims);
  if (!images || !labels) goto done;
  pixels = (int64_t)idims[1] * idims[2];
  if (pixels != info.n_in || idims[0] != ldims[0]) {
    fprintf(stderr, "classify_mnist: %u images of %ux%u pixels and %u labels do not fit a ticket "
            "taking %lld inputs\n", idims[0], idims[1], idims[2], ldims[0], (long long)info.n_in);
    goto done;
  }
  n = idims[0];
  x = malloc(sizeof(float) * kBatch * (size_t)info.n_in);
  y = malloc(sizeof(float) * kBatch * (size_t)info.n_out);
  if (!x || !y) {
    fprintf(stderr, "classify_mnist: out of memory\n");
    goto done;
  }
  for (start = 0; start < n; start += kBatch) {
    const int64_t batch = n - start < kBatch ? n - start : kBatch;
    int64_t b, k;
    if (lth_ticket_preprocess_u8(ticket, images + start * pixels, batch * pixels, x, &err) != LTH_OK ||
        lth_ticket_forward(ticket, x, batch, y, &err) != LTH_OK) {
      rc = fail("inference failed", err);
      goto done;
    }
    for (b = 0; b < batch; ++b) {
      const float* row = y + b * info.n_out;
      int64_t best = 0;
      for (k = 1; k < info.n_out; ++k)
        if (row[k] > row[best]) best = k;
      correct += best == labels[start + b];
    }
  }
  printf("accuracy %.4f (%lld/%lld correct)\n", n ? (double)correct / (double)n : 0.0,
         (long long)correct, (long long)n);
  rc = 0;

done:
  free(x);
  free(y);
  free(images);
  free(labels);
  lth_ticket_close(ticket);
  return rc;
}
