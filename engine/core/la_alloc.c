/*
** la_alloc.c -- tensor memory: allocation, accounting, the optional limit,
** the out-of-memory retry, and a cache of freed blocks.
**
** Why a cache: a training step allocates the same activation and gradient
** sizes every step.  Returning those blocks to malloc hands large ones back
** to the kernel (munmap) and the next step pays a page fault per 4 KiB page
** to get them again -- a fifth of a small model's step time.  Blocks of 16 KiB
** or more are therefore kept after they are freed, by size, and handed out
** again for the same size.  Live and cached bytes together stay within the
** most bytes live tensors have ever held at once (the high-water mark; at
** least 256 MiB), so the cache never raises the peak resident size above
** what the tensors themselves reached.  A bound by the bytes live now would
** not do: the collector frees the old gradients and a step's activations
** around the end of the backward pass, when few bytes are live, and blocks
** dropped then were page-faulted in again by the next step (a training step
** of the small benchmark GPT took 10-25k faults every other step).  A bound
** on the cached bytes alone would not do either: after training, generation
** allocates sequences of a new length at every step, and each size it freed
** was kept beside the training step's blocks (GPT-2's shape: 515 MiB more
** peak RSS).  It is emptied before an allocation is
** reported as failed, and by la_empty_cache(), which also lowers the
** high-water mark to what is live.  Under AddressSanitizer (and
** valgrind, built with -DLA_VALGRIND) a cached block is marked inaccessible
** past its two-word header until it is handed out again, so a use after free
** is caught even when the block was not given back to malloc.  Live bytes (what the Lua
** binding paces the collector by, and what the limit applies to) do not
** include cached blocks.
*/
#define _DEFAULT_SOURCE   /* madvise and MADV_HUGEPAGE (Linux), beside POSIX */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "la.h"

#if defined(__SANITIZE_ADDRESS__)
#define LA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LA_ASAN 1
#endif
#endif
#if defined(LA_ASAN)
#include <sanitizer/asan_interface.h>
#define LA_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define LA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#elif defined(LA_VALGRIND)
#include <valgrind/memcheck.h>
#define LA_POISON(p, n) VALGRIND_MAKE_MEM_NOACCESS(p, n)
#define LA_UNPOISON(p, n) VALGRIND_MAKE_MEM_UNDEFINED(p, n)
#else
#define LA_POISON(p, n) ((void)(p), (void)(n))
#define LA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static la_memstats la_mem;
static size_t la_high_water;   /* the most live bytes so far (la_empty_cache lowers it) */
static la_oom_handler la_oom_fn;
static void *la_oom_ctx;

void la_set_oom_handler(la_oom_handler fn, void *ctx) { la_oom_fn = fn; la_oom_ctx = ctx; }
void la_set_memory_limit(size_t bytes) { la_mem.limit_bytes = bytes; }
la_memstats la_memory_stats(void) { return la_mem; }
void la_reset_peak(void) { la_mem.peak_bytes = la_mem.live_bytes; }

/* ---------------------------------------------------------------- cache */

#define LA_CACHE_MIN ((size_t)16 << 10)
#define LA_CACHE_FLOOR ((size_t)256 << 20)
#define LA_CACHE_BUCKETS 256

/* A free block keeps its size and the next free block of its bucket in its
** own first bytes. */
typedef struct la_free_block {
  size_t size;
  struct la_free_block *next;
} la_free_block;

static la_free_block *la_cache[LA_CACHE_BUCKETS];

/* Block sizes: multiples of 4 KiB up to 1 MiB, then of 1/16 of the next
** power of two -- at most 6.25% more than asked for. */
static size_t la_block_size(size_t n) {
  if (n < LA_CACHE_MIN) return n;
  size_t step = 4096;
  if (n > ((size_t)1 << 20)) {
    size_t p = (size_t)1 << 20;
    while (p < n) p <<= 1;
    step = p / 16;
  }
  return (n + step - 1) / step * step;
}

static unsigned la_bucket(size_t size) { return (unsigned)((size >> 12) * 2654435761u) % LA_CACHE_BUCKETS; }

static void *la_cache_take(size_t size) {
  la_free_block **pp = &la_cache[la_bucket(size)];
  for (; *pp; pp = &(*pp)->next) {
    if ((*pp)->size == size) {
      la_free_block *b = *pp;
      *pp = b->next;
      la_mem.cached_bytes -= size;
      LA_UNPOISON(b, size);
      return b;
    }
  }
  return NULL;
}

static bool la_cache_put(void *p, size_t size) {
  size_t cap = la_high_water > LA_CACHE_FLOOR ? la_high_water : LA_CACHE_FLOOR;
  if (size < LA_CACHE_MIN || la_mem.live_bytes + la_mem.cached_bytes + size > cap) return false;
  la_free_block *b = p;
  unsigned k = la_bucket(size);
  b->size = size;
  b->next = la_cache[k];
  la_cache[k] = b;
  la_mem.cached_bytes += size;
  LA_POISON((char *)p + sizeof *b, size - sizeof *b);
  return true;
}

void la_empty_cache(void) {
  for (int k = 0; k < LA_CACHE_BUCKETS; k++) {
    while (la_cache[k]) {
      la_free_block *b = la_cache[k];
      la_cache[k] = b->next;
      free(b);
    }
  }
  la_mem.cached_bytes = 0;
  la_high_water = la_mem.live_bytes;
}

/* ---------------------------------------------------------------- allocation */

/* Fresh blocks of this size or more ask the kernel for 2 MiB pages where it
** hands them out on request (transparent huge pages in "madvise" mode):
** touching new memory for the first time costs one page fault per page, and
** on a virtual machine a fault can cost tens of microseconds -- 2.5 s to fill
** 545 MiB in 4 KiB pages on the machine lualign was measured on, 0.7-1.6 s
** in 2 MiB ones.  Loading a model and a training step's first pass over
** fresh activations are made of such first touches. */
#define LA_HUGE_MIN ((size_t)8 << 20)
#define LA_HUGE_PAGE ((uintptr_t)2 << 20)

static void la_advise_huge(void *p, size_t size) {
#ifdef MADV_HUGEPAGE
  uintptr_t lo = ((uintptr_t)p + LA_HUGE_PAGE - 1) & ~(LA_HUGE_PAGE - 1);
  uintptr_t hi = ((uintptr_t)p + size) & ~(LA_HUGE_PAGE - 1);
  if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);   /* advice: failure changes nothing */
#else
  (void)p; (void)size;
#endif
}

static void *la_try_alloc(size_t size) {
  if (la_mem.limit_bytes && la_mem.live_bytes + size > la_mem.limit_bytes) return NULL;
  void *p = la_cache_take(size);
  if (p) return p;
  /* 64-byte alignment suits AVX-512 loads and keeps rows on cache lines. */
  if (posix_memalign(&p, 64, size ? size : 64) != 0) return NULL;
  if (size >= LA_HUGE_MIN) la_advise_huge(p, size);
  return p;
}

static char *la_bytes_str(char *buf, size_t n, size_t bytes) {
  if (bytes >= ((size_t)1 << 30)) snprintf(buf, n, "%.2f GiB", bytes / 1073741824.0);
  else if (bytes >= ((size_t)1 << 20)) snprintf(buf, n, "%.2f MiB", bytes / 1048576.0);
  else snprintf(buf, n, "%zu bytes", bytes);
  return buf;
}

static void la_account(size_t nbytes) {
  la_mem.live_bytes += nbytes;
  la_mem.allocations++;
  if (la_mem.live_bytes > la_mem.peak_bytes) la_mem.peak_bytes = la_mem.live_bytes;
  if (la_mem.live_bytes > la_high_water) la_high_water = la_mem.live_bytes;
}

static la_storage *la_storage_init(la_storage *s, void *data, size_t nbytes) {
  la_account(nbytes);
  s->refcount = 1;
  s->version = 0;
  s->nbytes = nbytes;
  s->data = data;
  s->release = NULL;
  s->release_ctx = NULL;
  return s;
}

/* ---------------------------------------------------------------- small storages */
/* Storages of up to LA_INLINE_BYTES keep their data in the same block as
** their header: one malloc instead of a malloc and a posix_memalign, which
** is most of the cost of an op on a tiny tensor.  Such data is 16-byte
** aligned (malloc's), enough for vectors of 4 floats.  Freed blocks are
** recycled by size class (64-byte classes, up to 64 blocks each). */
#define LA_INLINE_BYTES 512
#define LA_INLINE_OFFSET ((sizeof(la_storage) + 15) & ~(size_t)15)
#define LA_INLINE_CLASS 64
#define LA_INLINE_NCLASS (LA_INLINE_BYTES / LA_INLINE_CLASS + 1)
#define LA_INLINE_KEEP 64

/* An inline storage is marked by release_ctx pointing at this tag (with no
** release function, release_ctx is otherwise unused).  Comparing the data
** address with the header's would not do: the data block of an ordinary
** storage can be the very next chunk malloc hands out. */
static const char la_inline_tag;

static void *la_inline_free[LA_INLINE_NCLASS][LA_INLINE_KEEP];
static int la_inline_n[LA_INLINE_NCLASS];

static bool la_is_inline(const la_storage *s) {
  return s->release == NULL && s->release_ctx == (void *)&la_inline_tag;
}

static int la_inline_class(size_t nbytes) { return (int)((nbytes + LA_INLINE_CLASS - 1) / LA_INLINE_CLASS); }

static la_storage *la_storage_new_inline(size_t nbytes) {
  if (la_mem.limit_bytes && la_mem.live_bytes + nbytes > la_mem.limit_bytes) return NULL;
  int c = la_inline_class(nbytes);
  la_storage *s = la_inline_n[c] > 0 ? la_inline_free[c][--la_inline_n[c]]
                                     : malloc(LA_INLINE_OFFSET + (size_t)c * LA_INLINE_CLASS);
  if (!s) return NULL;
  la_storage_init(s, (char *)s + LA_INLINE_OFFSET, nbytes);
  s->release_ctx = (void *)&la_inline_tag;
  return s;
}

static void la_inline_release(la_storage *s) {
  int c = la_inline_class(s->nbytes);
  if (la_inline_n[c] < LA_INLINE_KEEP) la_inline_free[c][la_inline_n[c]++] = s;
  else free(s);
}

la_storage *la_storage_new(size_t nbytes) {
  if (nbytes <= LA_INLINE_BYTES) {
    la_storage *s = la_storage_new_inline(nbytes);
    if (s) return s;
  }
  la_storage *s = malloc(sizeof *s);
  if (!s) return la_fail("out of memory allocating a storage header");
  size_t size = la_block_size(nbytes);
  void *data = la_try_alloc(size);
  if (!data) {
    /* Cached blocks of other sizes, and unreachable tensors the collector
    ** has not yet freed, may hold the memory: release both, try once more. */
    la_mem.oom_retries++;
    la_empty_cache();
    if (la_oom_fn) la_oom_fn(la_oom_ctx);
    data = la_try_alloc(size);
  }
  if (!data) {
    char want[32], live[32], limit[32];
    la_bytes_str(want, sizeof want, nbytes);
    la_bytes_str(live, sizeof live, la_mem.live_bytes);
    if (la_mem.limit_bytes)
      la_fail("out of memory: cannot allocate %s for a tensor (live tensors hold %s, limit %s)",
              want, live, la_bytes_str(limit, sizeof limit, la_mem.limit_bytes));
    else
      la_fail("out of memory: cannot allocate %s for a tensor (live tensors hold %s)", want, live);
    free(s);
    return NULL;
  }
  return la_storage_init(s, data, size);
}

la_storage *la_storage_wrap(void *data, size_t nbytes,
                            void (*release)(void *, void *, size_t), void *ctx) {
  la_storage *s = malloc(sizeof *s);
  if (!s) return la_fail("out of memory allocating a storage header");
  la_storage_init(s, data, nbytes);
  s->release = release;
  s->release_ctx = ctx;
  return s;
}

void la_storage_retain(la_storage *s) { s->refcount++; }

void la_storage_release(la_storage *s) {
  if (!s || --s->refcount > 0) return;
  la_mem.live_bytes -= s->nbytes;
  if (s->release) s->release(s->release_ctx, s->data, s->nbytes);
  else if (la_is_inline(s)) { la_inline_release(s); return; }
  else if (!la_cache_put(s->data, s->nbytes)) free(s->data);
  free(s);
}
