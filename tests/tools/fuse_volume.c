// fuse_volume: a FUSE file system serving one file, /volume, as a test source for
// dp420: a volume of a given size whose bytes are a function of (seed, offset), with
// faults at chosen offsets. Reads reach it through the kernel's FUSE path, directly
// (O_DIRECT or buffered) or through a loop device attached to /volume.
//
//   fuse_volume MOUNTPOINT --size BYTES [--seed N] [-d]
//
// Stays in the foreground (multi-threaded) until unmounted (fusermount3 -u, umount)
// or its connection is aborted. /control takes one command per write:
//   seed N        the content from now on is that of seed N
//   eio OFFSET    reads that touch byte OFFSET fail with EIO (up to 16 offsets)
//   block OFFSET  reads that touch byte OFFSET do not answer until "release", or until
//                 the kernel interrupts them (then EINTR)
//   release       answers every blocked read (with data) and stops blocking
//   clear         no faults
// /status reads "reads R eio E blocked B released L interrupted I": reads answered, reads
// failed with EIO, reads blocked now, and blocked reads ended by "release" and by an
// interrupt. The kernel keeps no cached page of /volume across an open.
#define FUSE_USE_VERSION 35
#include <errno.h>
#include <fuse.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FAULTS 16

struct state {
  uint64_t size;
  uint64_t seed;
  uint64_t eio[MAX_FAULTS];
  int eio_count;
  int blocking;
  uint64_t block_at;
  uint64_t reads, eio_reads, blocked, released, interrupted;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static struct state g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The volume's bytes [offset, offset + len) for `seed`.
static void fill(uint64_t seed, uint64_t offset, char* buf, size_t len) {
  for (size_t i = 0; i < len;) {
    uint64_t at = offset + i;
    uint64_t word = mix(seed * 0x100000001B3ull ^ (at / 8));
    unsigned from = (unsigned)(at % 8);
    for (unsigned b = from; b < 8 && i < len; ++b, ++i) buf[i] = (char)(word >> (8 * b));
  }
}

static int is_volume(const char* path) { return strcmp(path, "/volume") == 0; }
static int is_control(const char* path) { return strcmp(path, "/control") == 0; }
static int is_status(const char* path) { return strcmp(path, "/status") == 0; }

static int fv_getattr(const char* path, struct stat* st, struct fuse_file_info* fi) {
  (void)fi;
  memset(st, 0, sizeof(*st));
  if (strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
  } else if (is_volume(path)) {
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_size = (off_t)g.size;
  } else if (is_control(path) || is_status(path)) {
    st->st_mode = S_IFREG | (is_control(path) ? 0200 : 0444);
    st->st_nlink = 1;
    st->st_size = is_status(path) ? 4096 : 0;
  } else {
    return -ENOENT;
  }
  return 0;
}

static int fv_readdir(const char* path, void* buf, fuse_fill_dir_t filler, off_t off,
                      struct fuse_file_info* fi, enum fuse_readdir_flags flags) {
  (void)off, (void)fi, (void)flags;
  if (strcmp(path, "/") != 0) return -ENOENT;
  const char* names[] = {".", "..", "volume", "control", "status"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) filler(buf, names[i], NULL, 0, 0);
  return 0;
}

static int fv_open(const char* path, struct fuse_file_info* fi) {
  if (!is_volume(path) && !is_control(path) && !is_status(path)) return -ENOENT;
  if (is_status(path)) fi->direct_io = 1;  // never cached: it changes
  return 0;
}

// Waits while the read is blocked: until "release" or an interrupt. Called locked.
static int wait_blocked(void) {
  ++g.blocked;
  int result = 0;
  while (g.blocking) {
    if (fuse_interrupted()) {
      result = -EINTR;
      ++g.interrupted;
      break;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 20 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&g.cv, &g.mu, &until);
  }
  if (result == 0) ++g.released;
  --g.blocked;
  return result;
}

static int volume_read(char* buf, size_t len, off_t off) {
  uint64_t offset = (uint64_t)off;
  if (offset >= g.size) return 0;
  if (len > g.size - offset) len = (size_t)(g.size - offset);
  uint64_t end = offset + len;
  pthread_mutex_lock(&g.mu);
  int result = 0;
  for (int i = 0; i < g.eio_count; ++i) {
    if (g.eio[i] >= offset && g.eio[i] < end) result = -EIO;
  }
  if (result == 0 && g.blocking && g.block_at >= offset && g.block_at < end) {
    result = wait_blocked();
  }
  if (result == -EIO) ++g.eio_reads;
  if (result == 0) ++g.reads;
  uint64_t seed = g.seed;
  pthread_mutex_unlock(&g.mu);
  if (result != 0) return result;
  fill(seed, offset, buf, len);
  return (int)len;
}

static int fv_read(const char* path, char* buf, size_t len, off_t off, struct fuse_file_info* fi) {
  (void)fi;
  if (is_volume(path)) return volume_read(buf, len, off);
  if (!is_status(path)) return -EACCES;
  char text[256];
  pthread_mutex_lock(&g.mu);
  int n = snprintf(text, sizeof(text),
                   "reads %" PRIu64 " eio %" PRIu64 " blocked %" PRIu64 " released %" PRIu64
                   " interrupted %" PRIu64 "\n",
                   g.reads, g.eio_reads, g.blocked, g.released, g.interrupted);
  pthread_mutex_unlock(&g.mu);
  if (off >= n) return 0;
  size_t copy = (size_t)(n - off) < len ? (size_t)(n - off) : len;
  memcpy(buf, text + off, copy);
  return (int)copy;
}

// One command of /control; 0 or -EINVAL. Called locked.
static int command(const char* text) {
  char word[16];
  uint64_t value = 0;
  int fields = sscanf(text, "%15s %" SCNu64, word, &value);
  if (fields == 2 && strcmp(word, "seed") == 0) {
    g.seed = value;
  } else if (fields == 2 && strcmp(word, "eio") == 0 && g.eio_count < MAX_FAULTS) {
    g.eio[g.eio_count++] = value;
  } else if (fields == 2 && strcmp(word, "block") == 0) {
    g.blocking = 1;
    g.block_at = value;
  } else if (fields == 1 && strcmp(word, "release") == 0) {
    g.blocking = 0;
    pthread_cond_broadcast(&g.cv);
  } else if (fields == 1 && strcmp(word, "clear") == 0) {
    g.eio_count = 0;
    g.blocking = 0;
    pthread_cond_broadcast(&g.cv);
  } else {
    return -EINVAL;
  }
  return 0;
}

static int fv_write(const char* path, const char* buf, size_t len, off_t off,
                    struct fuse_file_info* fi) {
  (void)off, (void)fi;
  if (!is_control(path)) return -EACCES;
  char text[64];
  if (len >= sizeof(text)) return -EINVAL;
  memcpy(text, buf, len);
  text[len] = '\0';
  pthread_mutex_lock(&g.mu);
  int result = command(text);
  pthread_mutex_unlock(&g.mu);
  return result == 0 ? (int)len : result;
}

static int fv_truncate(const char* path, off_t size, struct fuse_file_info* fi) {
  (void)size, (void)fi;
  return is_control(path) ? 0 : -EACCES;
}

static void* fv_init(struct fuse_conn_info* conn, struct fuse_config* cfg) {
  (void)conn;
  cfg->intr = 1;  // the kernel's INTERRUPT reaches fuse_interrupted()
  cfg->attr_timeout = 0;
  cfg->entry_timeout = 0;
  cfg->kernel_cache = 0;
  return NULL;
}

static const struct fuse_operations kOps = {
    .getattr = fv_getattr,
    .open = fv_open,
    .read = fv_read,
    .write = fv_write,
    .truncate = fv_truncate,
    .readdir = fv_readdir,
    .init = fv_init,
};

static int usage(void) {
  fprintf(stderr, "usage: fuse_volume MOUNTPOINT --size BYTES [--seed N] [-d]\n");
  return 2;
}

int main(int argc, char** argv) {
  g.seed = 1;
  // fuse_main's arguments: the mount point, foreground, options; ours are taken out.
  char* fuse_argv[8];
  int fuse_argc = 0;
  fuse_argv[fuse_argc++] = argv[0];
  fuse_argv[fuse_argc++] = "-f";
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      g.size = strtoull(argv[++i], NULL, 0);
    } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
      g.seed = strtoull(argv[++i], NULL, 0);
    } else if ((strcmp(argv[i], "-d") == 0 || argv[i][0] != '-') && fuse_argc < 6) {
      fuse_argv[fuse_argc++] = argv[i];
    } else {
      return usage();
    }
  }
  if (g.size == 0 || fuse_argc < 3) return usage();
  fuse_argv[fuse_argc++] = "-oallow_other,default_permissions,fsname=fuse_volume";
  fuse_argv[fuse_argc] = NULL;
  int result = fuse_main(fuse_argc, fuse_argv, &kOps, NULL);
  // Said, so that a test that finds the server gone knows it ended on its own (an
  // unmount, an aborted connection, SIGHUP/SIGINT/SIGTERM) and not by a crash.
  fprintf(stderr, "fuse_volume: fuse_main returned %d\n", result);
  return result;
}
