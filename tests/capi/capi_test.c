/* C API test, compiled as C: init, backup (full + incremental), snapshots,
 * restore, verify, and the error contract (codes + messages). */
#include <dp420/dp420.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int g_passed, g_failed;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (cond) {                                                          \
      ++g_passed;                                                        \
    } else {                                                             \
      ++g_failed;                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                    \
  } while (0)

static void WriteSource(const char* path, unsigned seed, size_t bytes) {
  FILE* f = fopen(path, "wb");
  unsigned x = 12345;
  for (size_t i = 0; i < bytes; ++i) {
    x = x * 1103515245u + 12345u;
    /* a zero region in the middle, a seed-dependent region at 1 MiB */
    unsigned char c = (i >= bytes / 2 && i < bytes / 2 + 512 * 1024) ? 0 : (unsigned char)(x >> 16);
    if (i >= (1 << 20) && i < (1 << 20) + 4096) c = (unsigned char)(seed + i);
    fputc(c, f);
  }
  fclose(f);
}

static int SameFiles(const char* a, const char* b) {
  FILE* fa = fopen(a, "rb");
  FILE* fb = fopen(b, "rb");
  int same = fa && fb;
  while (same) {
    int ca = fgetc(fa), cb = fgetc(fb);
    if (ca != cb) same = 0;
    if (ca == EOF || cb == EOF) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

static int g_progress_calls;
static void OnProgress(void* user, const dp420_progress_t* p) {
  (void)user;
  if (p->bytes_done <= p->bytes_total) ++g_progress_calls;
}

static int g_problems;
static void OnProblem(void* user, const char* o, const char* m, const char* s) {
  (void)user, (void)o, (void)m, (void)s;
  ++g_problems;
}

int main(int argc, char** argv) {
  const char* work = argc > 1 ? argv[1] : "capi-work";
  char cmd[4096], repo_path[1024], src[1024], dst[1024];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", work, work);
  if (system(cmd) != 0) return 2;
  snprintf(repo_path, sizeof(repo_path), "%s/repo", work);
  snprintf(src, sizeof(src), "%s/source.img", work);
  snprintf(dst, sizeof(dst), "%s/restored.img", work);

  CHECK(dp420_version() == DP420_VERSION);
  dp420_ctx_t* ctx = dp420_ctx_new();
  CHECK(ctx != NULL);
  dp420_set_progress(ctx, OnProgress, NULL);

  dp420_repo_t* repo = NULL;
  int rc = dp420_repo_open(ctx, repo_path, &repo);
  CHECK(rc == -DP420_ENOENT);
  CHECK(strstr(dp420_errmsg(ctx), "repo") != NULL);

  CHECK(dp420_repo_init(ctx, repo_path) == 0);
  CHECK(dp420_repo_init(ctx, repo_path) == -DP420_EEXIST);
  CHECK(dp420_repo_open(ctx, repo_path, &repo) == 0);

  WriteSource(src, 1, 3 * 1024 * 1024 + 1000);
  dp420_backup_opts_t bo;
  dp420_backup_opts_init(&bo);
  bo.volume = "bad/name";
  bo.source = src;
  dp420_backup_result_t br;
  memset(&br, 0, sizeof(br));
  br.struct_size = sizeof(br);
  CHECK(dp420_backup(ctx, repo, &bo, &br) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "bad/name") != NULL);

  bo.volume = "vol1";
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(br.parent[0] == '\0');
  CHECK(br.volume_size == 3 * 1024 * 1024 + 1000);
  CHECK(br.blocks_total == (br.volume_size + 65535) / 65536);
  CHECK(br.blocks_zero == 7); /* the 512 KiB zero run covers 7 whole blocks */
  CHECK(g_progress_calls > 0);
  char first_id[17];
  strcpy(first_id, br.snapshot_id);

  WriteSource(src, 2, 3 * 1024 * 1024 + 1000);
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(strcmp(br.parent, first_id) == 0);
  CHECK(br.blocks_changed == 1);
  CHECK(br.blocks_stored == 1);

  dp420_snapshot_list_t* list = NULL;
  CHECK(dp420_snapshots(ctx, repo, "vol1", &list) == 0);
  CHECK(dp420_snapshot_count(list) == 2);
  CHECK(strcmp(dp420_snapshot_id(list, 0), first_id) == 0);
  CHECK(strstr(dp420_snapshot_json(list, 1), "checksum_sha256") != NULL);
  dp420_snapshot_list_free(list);

  dp420_restore_opts_t ro;
  dp420_restore_opts_init(&ro);
  ro.volume = "vol1";
  ro.target = dst;
  dp420_restore_result_t rr;
  memset(&rr, 0, sizeof(rr));
  rr.struct_size = sizeof(rr);
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == 0);
  CHECK(SameFiles(src, dst));
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == -DP420_EEXIST);
  ro.snapshot = "ffffffffffffffff";
  ro.force = 1;
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == -DP420_ENOENT);
  CHECK(strstr(dp420_errmsg(ctx), "ffffffffffffffff") != NULL);

  dp420_verify_opts_t vo;
  dp420_verify_opts_init(&vo);
  vo.read_data = 1;
  vo.on_problem = OnProblem;
  dp420_verify_result_t vr;
  memset(&vr, 0, sizeof(vr));
  vr.struct_size = sizeof(vr);
  CHECK(dp420_verify(ctx, repo, &vo, &vr) == 0);
  CHECK(vr.problems_found == 0 && g_problems == 0);
  CHECK(vr.snapshots_checked == 2);

  CHECK(strcmp(dp420_strerror(-DP420_ECORRUPT), "damaged data") == 0);
  dp420_repo_close(repo);
  dp420_ctx_free(ctx);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
  if (system(cmd) != 0) ++g_failed;
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
