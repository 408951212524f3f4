/* C API test, compiled as C: init, backup (full + incremental), snapshots,
 * restore, verify, the error contract (codes + messages), clients, and a
 * server on this host with remote operations against it. */
#include <arpa/inet.h>
#include <dp420/dp420.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

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

static char* ReadAll(const char* path) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  char* text = calloc(1, 1 << 16);
  size_t n = fread(text, 1, (1 << 16) - 1, f);
  text[n] = '\0';
  fclose(f);
  return text;
}

static unsigned Mode(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? (unsigned)(st.st_mode & 0777) : 0u;
}

static int Exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void WriteFile(const char* path, const char* text, mode_t mode) {
  FILE* f = fopen(path, "wb");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
  chmod(path, mode);
}

/* A passphrase slot made by a separate implementation (Python: hashlib.scrypt,
 * the cryptography package's AESGCM) of engine/crypto/keyslot.h's scheme:
 * master key bytes 0x40..0x5f, passphrase "capi passphrase", N = 1024. */
static const char kCapiRepoId[] = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf";
static const char kCapiSlot[] =
    "{\"format\":\"dp420-key-slot\",\"format_version\":1,\"slot_id\":1,\"kind\":\"passphrase\","
    "\"repo_id\":\"c0c1c2c3c4c5c6c7c8c9cacbcccdcecf\",\"kdf\":\"scrypt\",\"scrypt_n\":1024,"
    "\"scrypt_r\":8,\"scrypt_p\":1,\"kdf_salt\":"
    "\"0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20\","
    "\"cipher\":\"aes-256-gcm\",\"nonce\":\"707172737475767778797a7b\",\"wrapped_key\":"
    "\"6084e9720f2abaf02e4a20d0d6b6186a7f4eed3c07d40b586bbde3c0acb41d30\","
    "\"tag\":\"074a9d6196999b4cf0790346567bf120\"}\n";

/* The keys of an encrypted repository: a repository folder laid out by hand
 * with the slot above, then list, add, export, remove through the C API. */
static void TestKeys(dp420_ctx_t* ctx, const char* work) {
  char repo[1024], path[1200], pass[1100], wrong[1100], key[1100], cmd[2600];
  snprintf(repo, sizeof(repo), "%s/keys-repo", work);
  snprintf(cmd, sizeof(cmd), "mkdir -p '%s/keys' '%s/locks'", repo, repo);
  CHECK(system(cmd) == 0);
  snprintf(path, sizeof(path), "%s/config", repo);
  snprintf(cmd, sizeof(cmd), "{\"format\":\"dp420-repository\",\"format_version\":3,"
           "\"repo_id\":\"%s\"}\n{}\n", kCapiRepoId);
  WriteFile(path, cmd, 0600);
  snprintf(path, sizeof(path), "%s/keys/slot-00000001.json", repo);
  WriteFile(path, kCapiSlot, 0600);
  snprintf(pass, sizeof(pass), "%s/capi.pass", work);
  WriteFile(pass, "capi passphrase\n", 0600);
  snprintf(wrong, sizeof(wrong), "%s/wrong.pass", work);
  WriteFile(wrong, "not it\n", 0600);
  snprintf(key, sizeof(key), "%s/capi.key", work);

  dp420_key_list_t list;
  memset(&list, 0, sizeof(list));
  list.struct_size = sizeof(list);
  CHECK(dp420_key_list(ctx, repo, &list) == -DP420_EINVAL); /* no key source */
  CHECK(strstr(dp420_errmsg(ctx), "--passphrase-file") != NULL);
  CHECK(dp420_ctx_set_passphrase_file(ctx, wrong) == 0);
  CHECK(dp420_key_list(ctx, repo, &list) == -DP420_EKEY);
  CHECK(dp420_ctx_set_passphrase_file(ctx, pass) == 0);
  CHECK(dp420_key_list(ctx, repo, &list) == 0);
  CHECK(list.slot_count == 1 && list.slots[0].slot_id == 1);
  CHECK(list.slot_count == 1 && list.slots[0].kind == DP420_KEY_SLOT_PASSPHRASE);
  CHECK(list.slot_count == 1 && list.slots[0].scrypt_n == 1024 && list.slots[0].opened == 1);
  dp420_key_list_free(&list);

  uint32_t id = 0;
  CHECK(dp420_key_add(ctx, repo, NULL, key, 0, &id) == 0);
  CHECK(id == 2 && Mode(key) == 0600);
  CHECK(dp420_key_add(ctx, repo, pass, key, 0, &id) == -DP420_EINVAL); /* two new secrets */
  char* paper = NULL;
  CHECK(dp420_key_export_paper(ctx, repo, &paper) == 0);
  CHECK(paper != NULL && strstr(paper, "1: 4041 4243 4445 4647") != NULL);
  dp420_free(paper);

  CHECK(dp420_ctx_set_passphrase_file(ctx, NULL) == 0);
  CHECK(dp420_ctx_set_repo_key_file(ctx, key) == 0);
  CHECK(dp420_key_remove(ctx, repo, 1) == 0);
  CHECK(dp420_key_remove(ctx, repo, 2) == -DP420_EINVAL); /* the last slot */
  CHECK(dp420_key_list(ctx, repo, &list) == 0);
  CHECK(list.slot_count == 1 && list.slots[0].kind == DP420_KEY_SLOT_KEY_FILE);
  dp420_key_list_free(&list);
  list.struct_size = sizeof(list) - 1;
  CHECK(dp420_key_list(ctx, repo, &list) == -DP420_EINVAL);
  CHECK(dp420_ctx_set_repo_key_file(ctx, NULL) == 0);
}

/* Limits of client db2, through the first limits struct and through the one
 * with a struct_size (max_sessions). */
static void TestClientLimits(dp420_ctx_t* ctx, const char* clients) {
  dp420_client_limits_t v1;
  dp420_client_limits_init(&v1);
  v1.max_backups = 3;
  CHECK(dp420_client_set_limits(ctx, clients, "db2", &v1) == 0);
  dp420_client_limits2_t l;
  dp420_client_limits2_init(&l);
  CHECK(l.struct_size == sizeof(l) && l.max_sessions == DP420_LIMIT_UNCHANGED);
  l.max_sessions = 7;
  CHECK(dp420_client_set_limits2(ctx, clients, "db2", &l) == 0);
  char* text = ReadAll(clients);
  CHECK(text != NULL && strstr(text, "\"max_sessions\":7") != NULL);
  CHECK(text != NULL && strstr(text, "\"max_backups\":3") != NULL);
  free(text);
  l.max_sessions = -5;
  CHECK(dp420_client_set_limits2(ctx, clients, "db2", &l) == -DP420_EINVAL);
  l.max_sessions = DP420_LIMIT_DEFAULT;
  CHECK(dp420_client_set_limits2(ctx, clients, "nobody", &l) == -DP420_ENOENT);
  l.struct_size = sizeof(size_t);  /* no fields: refused */
  CHECK(dp420_client_set_limits2(ctx, clients, "db2", &l) == -DP420_EINVAL);
  l.struct_size = sizeof(l);
  CHECK(dp420_client_set_limits2(ctx, clients, "db2", &l) == 0);
  text = ReadAll(clients);
  CHECK(text != NULL && strstr(text, "max_sessions") == NULL);
  free(text);
}

/* client_add / client_remove: the round trip, and refusals that change nothing. */
static void TestClients(dp420_ctx_t* ctx, const char* work) {
  char clients[1024], key1[1024], key2[1024], missing[1024];
  snprintf(clients, sizeof(clients), "%s/clients.json", work);
  snprintf(key1, sizeof(key1), "%s/db1.key", work);
  snprintf(key2, sizeof(key2), "%s/db2.key", work);
  snprintf(missing, sizeof(missing), "%s/no-such-clients.json", work);

  CHECK(dp420_client_add(ctx, clients, "db1", NULL, key1) == 0);
  CHECK(Mode(clients) == 0600);
  CHECK(Mode(key1) == 0600);
  char* before = ReadAll(clients);
  CHECK(before != NULL && strstr(before, "\"db1\"") != NULL);
  CHECK(before != NULL && strstr(before, "\"append\"") != NULL);

  /* An existing name: refused, and no key file appears. */
  CHECK(dp420_client_add(ctx, clients, "db1", "admin", key2) == -DP420_EEXIST);
  CHECK(strstr(dp420_errmsg(ctx), "db1") != NULL);
  CHECK(!Exists(key2));
  /* An existing key file: refused before the clients file changes. */
  CHECK(dp420_client_add(ctx, clients, "db2", NULL, key1) == -DP420_EEXIST);
  CHECK(strstr(dp420_errmsg(ctx), "db1.key") != NULL);
  char* after = ReadAll(clients);
  CHECK(before && after && strcmp(before, after) == 0);
  free(after);
  CHECK(dp420_client_add(ctx, clients, "bad/name", NULL, key2) == -DP420_EINVAL);
  CHECK(dp420_client_add(ctx, clients, "db2", "root", key2) == -DP420_EINVAL);
  CHECK(!Exists(key2));

  CHECK(dp420_client_add(ctx, clients, "db2", "admin", key2) == 0);
  TestClientLimits(ctx, clients);
  CHECK(dp420_client_remove(ctx, clients, "db2") == 0);
  CHECK(dp420_client_remove(ctx, clients, "db2") == -DP420_ENOENT);
  CHECK(strstr(dp420_errmsg(ctx), "db2") != NULL);
  CHECK(dp420_client_remove(ctx, missing, "db1") == -DP420_ENOENT);
  after = ReadAll(clients);
  CHECK(before && after && strcmp(before, after) == 0);
  free(before);
  free(after);
}

/* A TCP port on 127.0.0.1 that is bound but not listening: connects are
 * refused for as long as *fd stays open. */
static int RefusingPort(int* fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  if (*fd < 0 || bind(*fd, (struct sockaddr*)&a, sizeof(a)) != 0) return 0;
  if (getsockname(*fd, (struct sockaddr*)&a, &len) != 0) return 0;
  return ntohs(a.sin_port);
}

static void TestConnectRefusals(dp420_ctx_t* ctx, const char* work) {
  char key[1024], loose[1024], address[64];
  snprintf(key, sizeof(key), "%s/db1.key", work);
  snprintf(loose, sizeof(loose), "%s/loose.key", work);
  int fd = -1;
  int port = RefusingPort(&fd);
  CHECK(port > 0);
  snprintf(address, sizeof(address), "127.0.0.1:%d", port);

  dp420_remote_opts_t ro;
  dp420_remote_opts_init(&ro);
  ro.address = address;
  ro.client = "db1";
  ro.key_file = key;
  ro.retry_ms = 100;
  dp420_repo_t* remote = NULL;
  CHECK(dp420_repo_connect(ctx, &ro, &remote) == -DP420_ENET);
  CHECK(remote == NULL);
  CHECK(strstr(dp420_errmsg(ctx), address) != NULL);

  /* A key file others may read is refused, naming the file. */
  char cmd[4096];
  snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0644 '%s'", key, loose, loose);
  CHECK(system(cmd) == 0);
  ro.key_file = loose;
  CHECK(dp420_repo_connect(ctx, &ro, &remote) == -DP420_EPERM);
  CHECK(strstr(dp420_errmsg(ctx), loose) != NULL);
  CHECK(remote == NULL);
  ro.key_file = NULL;
  unsetenv("DP420_KEY_FILE");
  CHECK(dp420_repo_connect(ctx, &ro, &remote) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "DP420_KEY_FILE") != NULL);
  ro.address = NULL;
  CHECK(dp420_repo_connect(ctx, &ro, &remote) == -DP420_EINVAL);
  if (fd >= 0) close(fd);
}

/* Every numeric option out of its range is refused with -DP420_EINVAL and a
 * message naming it, before anything is read or written. */
static void ExpectRefused(dp420_ctx_t* ctx, int rc, const char* option) {
  CHECK(rc == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), option) != NULL);
}

static void TestBounds(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* src, const char* work) {
  dp420_backup_opts_t bo;
  dp420_backup_opts_init(&bo);
  bo.volume = "bounds";
  bo.source = src;
  const uint32_t threads[] = {DP420_MAX_THREADS + 1, 10000, UINT32_MAX};
  for (size_t i = 0; i < sizeof(threads) / sizeof(threads[0]); ++i) {
    bo.threads = threads[i];
    ExpectRefused(ctx, dp420_backup(ctx, repo, &bo, NULL), "threads");
  }
  /* Within DP420_MAX_THREADS but over the buffer budget at 4 MiB blocks. */
  bo.threads = DP420_MAX_THREADS;
  bo.block_size = DP420_MAX_BLOCK_SIZE;
  ExpectRefused(ctx, dp420_backup(ctx, repo, &bo, NULL), "threads");
  bo.threads = 0;
  const uint32_t sizes[] = {1, 1000, 6000, DP420_MAX_BLOCK_SIZE * 2u, UINT32_MAX};
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    bo.block_size = sizes[i];
    ExpectRefused(ctx, dp420_backup(ctx, repo, &bo, NULL), "block size");
  }
  dp420_snapshot_list_t* list = NULL;
  CHECK(dp420_snapshots(ctx, repo, "bounds", &list) == 0);
  CHECK(list != NULL && dp420_snapshot_count(list) == 0);
  dp420_snapshot_list_free(list);

  char target[1024];
  snprintf(target, sizeof(target), "%s/bounds.img", work);
  dp420_restore_opts_t ro;
  dp420_restore_opts_init(&ro);
  ro.volume = "vol1";
  ro.target = target;
  ro.threads = 100000;
  ExpectRefused(ctx, dp420_restore(ctx, repo, &ro, NULL), "threads");
  CHECK(!Exists(target));

  dp420_bench_opts_t bn;
  dp420_bench_opts_init(&bn);
  bn.source = src;
  char* report = NULL;
  const double seconds[] = {-1, DP420_MAX_SECONDS_PER_POINT + 1, 1e300};
  for (size_t i = 0; i < sizeof(seconds) / sizeof(seconds[0]); ++i) {
    bn.seconds_per_point = seconds[i];
    ExpectRefused(ctx, dp420_bench(ctx, &bn, &report), "seconds");
    CHECK(report == NULL);
  }

  char key[1024];
  snprintf(key, sizeof(key), "%s/db1.key", work);
  dp420_remote_opts_t rem;
  dp420_remote_opts_init(&rem);
  rem.address = "127.0.0.1:1";
  rem.client = "db1";
  rem.key_file = key;
  dp420_repo_t* remote = NULL;
  rem.heartbeat_interval_ms = DP420_MIN_HEARTBEAT_MS - 1;
  ExpectRefused(ctx, dp420_repo_connect(ctx, &rem, &remote), "heartbeat_interval");
  rem.heartbeat_interval_ms = DP420_MAX_HEARTBEAT_MS + 1;
  ExpectRefused(ctx, dp420_repo_connect(ctx, &rem, &remote), "heartbeat_interval");
  rem.heartbeat_interval_ms = 0;
  rem.max_clock_skew_ms = DP420_MAX_CLOCK_SKEW_MS + 1;
  ExpectRefused(ctx, dp420_repo_connect(ctx, &rem, &remote), "max_clock_skew");
  rem.max_clock_skew_ms = 0;
  rem.retry_ms = UINT32_MAX;
  ExpectRefused(ctx, dp420_repo_connect(ctx, &rem, &remote), "retry_for");
  CHECK(remote == NULL);

  dp420_serve_opts_t so;
  dp420_serve_opts_init(&so);
  char repo_path[1024], clients[1024];
  snprintf(repo_path, sizeof(repo_path), "%s/repo", work);
  snprintf(clients, sizeof(clients), "%s/clients.json", work);
  so.repo = repo_path;
  so.listen = "127.0.0.1:0";
  so.clients = clients;
  so.heartbeat_interval_ms = 1;
  ExpectRefused(ctx, dp420_serve(ctx, &so), "heartbeat_interval");
  so.heartbeat_interval_ms = UINT32_MAX;
  ExpectRefused(ctx, dp420_serve(ctx, &so), "heartbeat_interval");
}

/* dp420_serve on its own thread and context, on a port the kernel picks. */
typedef struct Server {
  dp420_ctx_t* ctx;
  char repo[1024];
  char clients[1024];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int port;  /* 0 until listening */
  int done;
  int rc;
  char errmsg[1024];
} Server;

static void OnListening(void* user, uint16_t port) {
  Server* s = user;
  pthread_mutex_lock(&s->mu);
  s->port = port;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void* ServeThread(void* arg) {
  Server* s = arg;
  dp420_serve_opts_t so;
  dp420_serve_opts_init(&so);
  so.repo = s->repo;
  so.listen = "127.0.0.1:0";
  so.clients = s->clients;
  so.heartbeat_interval_ms = 500;
  so.on_listening = OnListening;
  so.user = s;
  int rc = dp420_serve(s->ctx, &so);
  pthread_mutex_lock(&s->mu);
  s->rc = rc;
  snprintf(s->errmsg, sizeof(s->errmsg), "%s", dp420_errmsg(s->ctx));
  s->done = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* Waits until the server listens (its port) or ends (0). */
static int WaitListening(Server* s) {
  pthread_mutex_lock(&s->mu);
  while (s->port == 0 && !s->done) pthread_cond_wait(&s->cv, &s->mu);
  int port = s->done ? 0 : s->port;
  pthread_mutex_unlock(&s->mu);
  return port;
}

/* Backup, snapshots, restore and verify through a handle from
 * dp420_repo_connect. A build without network backup says so and stops
 * there. */
static void TestRemoteOperations(dp420_ctx_t* ctx, dp420_repo_t* remote, const char* work) {
  char src[1024], dst[1024];
  snprintf(src, sizeof(src), "%s/remote-source.img", work);
  snprintf(dst, sizeof(dst), "%s/remote-restored.img", work);
  dp420_snapshot_list_t* list = NULL;
  CHECK(dp420_snapshots(ctx, remote, "netvol", &list) == 0);
  CHECK(dp420_snapshot_count(list) == 0);
  dp420_snapshot_list_free(list);
  list = NULL;

  WriteSource(src, 3, 2 * 1024 * 1024 + 300);
  dp420_backup_opts_t bo;
  dp420_backup_opts_init(&bo);
  bo.volume = "netvol";
  bo.source = src;
  dp420_backup_result_t br;
  memset(&br, 0, sizeof(br));
  br.struct_size = sizeof(br);
  int rc = dp420_backup(ctx, remote, &bo, &br);
  if (rc != 0 && strstr(dp420_errmsg(ctx), "not available in this build") != NULL) {
    printf("remote backup not available in this build: remote backup/restore not checked\n");
    return;
  }
  CHECK(rc == 0);
  CHECK(br.volume_size == 2 * 1024 * 1024 + 300);
  CHECK(br.bytes_sent > 0);
  CHECK(br.reconnects == 0);
  /* The default compression is auto, which is off on a remote backup (not refused). */
  CHECK(br.compression_auto == 1 && strcmp(br.compression, "off") == 0);
  CHECK(br.compression_measured != NULL && strstr(br.compression_measured, "remote") != NULL);
  /* A codec is refused there: records go over the network raw. */
  bo.compression = "zstd";
  CHECK(dp420_backup(ctx, remote, &bo, &br) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "remote") != NULL);
  bo.compression = NULL;

  rc = dp420_snapshots(ctx, remote, "netvol", &list);
  CHECK(rc == 0);
  if (rc != 0) fprintf(stderr, "dp420_snapshots after a backup: %s\n", dp420_errmsg(ctx));
  CHECK(dp420_snapshot_count(list) == 1);
  CHECK(dp420_snapshot_count(list) == 1 && strcmp(dp420_snapshot_id(list, 0), br.snapshot_id) == 0);
  dp420_snapshot_list_free(list);

  dp420_restore_opts_t ro;
  dp420_restore_opts_init(&ro);
  ro.volume = "netvol";
  ro.target = dst;
  dp420_restore_result_t rr;
  memset(&rr, 0, sizeof(rr));
  rr.struct_size = sizeof(rr);
  ro.read_through = 65536;  /* the server reads the packs: refused */
  CHECK(dp420_restore(ctx, remote, &ro, &rr) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "local repository") != NULL);
  ro.read_through = 0;
  rc = dp420_restore(ctx, remote, &ro, &rr);
  CHECK(rc == 0);
  if (rc != 0) fprintf(stderr, "remote dp420_restore: %s\n", dp420_errmsg(ctx));
  CHECK(SameFiles(src, dst));
  CHECK(strcmp(rr.checksum_sha256, br.checksum_sha256) == 0);

  dp420_verify_opts_t vo;
  dp420_verify_opts_init(&vo);
  vo.volume = "netvol";
  vo.read_data = 1;
  dp420_verify_result_t vr;
  memset(&vr, 0, sizeof(vr));
  vr.struct_size = sizeof(vr);
  rc = dp420_verify(ctx, remote, &vo, &vr);
  CHECK(rc == 0);
  if (rc != 0) fprintf(stderr, "remote dp420_verify: %s\n", dp420_errmsg(ctx));
  CHECK(vr.problems_found == 0);
  CHECK(vr.snapshots_checked == 1);
}

static void TestServer(dp420_ctx_t* ctx, const char* work, const char* repo_path) {
  Server s;
  memset(&s, 0, sizeof(s));
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  s.ctx = dp420_ctx_new();
  snprintf(s.repo, sizeof(s.repo), "%s", repo_path);
  snprintf(s.clients, sizeof(s.clients), "%s/clients.json", work);
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, ServeThread, &s) == 0);
  int port = WaitListening(&s);
  CHECK(port > 0);
  if (port == 0) fprintf(stderr, "dp420_serve: %d %s\n", s.rc, s.errmsg);

  char address[64], key[1024];
  snprintf(address, sizeof(address), "127.0.0.1:%d", port);
  snprintf(key, sizeof(key), "%s/db1.key", work);
  dp420_remote_opts_t ro;
  dp420_remote_opts_init(&ro);
  ro.address = address;
  ro.client = "db1";
  ro.key_file = key;
  dp420_repo_t* remote = NULL;
  if (port > 0) {
    CHECK(dp420_repo_connect(ctx, &ro, &remote) == 0);
    if (!remote) fprintf(stderr, "dp420_repo_connect: %s\n", dp420_errmsg(ctx));
  }
  if (remote) {
    int64_t offset = dp420_repo_clock_offset_ns(remote);
    CHECK(offset > -1000000000 && offset < 1000000000); /* one host, one clock */
    TestRemoteOperations(ctx, remote, work);
    dp420_repo_close(remote);
    remote = NULL;
    /* A client the server does not know is refused. */
    ro.client = "nobody";
    CHECK(dp420_repo_connect(ctx, &ro, &remote) == -DP420_EPERM);
    CHECK(remote == NULL);
  }
  dp420_cancel(s.ctx); /* stops the server: it drains and returns 0 */
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(s.rc == 0);
  dp420_ctx_free(s.ctx);
  pthread_cond_destroy(&s.cv);
  pthread_mutex_destroy(&s.mu);
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

  /* read_through: runs through stale records; more than 4 MiB is refused by
   * name. A caller built before the field existed passes the older size and
   * restores as before. */
  ro.snapshot = NULL;
  ro.read_through = 128 << 10;
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == 0);
  CHECK(SameFiles(src, dst));
  ro.read_through = (4u << 20) + 1;
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "read_through") != NULL);
  ro.struct_size = offsetof(dp420_restore_opts_t, read_through);
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == 0);
  CHECK(SameFiles(src, dst));
  ro.struct_size = offsetof(dp420_restore_opts_t, read_through) - 1;
  CHECK(dp420_restore(ctx, repo, &ro, &rr) == -DP420_EINVAL);
  ro.struct_size = sizeof(ro);
  ro.read_through = 0;

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

  /* A caller built before the network counters existed: its struct ends at
   * registered_buffers, and nothing after it is written. */
  unsigned char old_result[sizeof(dp420_backup_result_t)];
  memset(old_result, 0xAB, sizeof(old_result));
  dp420_backup_result_t* old = (dp420_backup_result_t*)old_result;
  old->struct_size = offsetof(dp420_backup_result_t, bytes_sent);
  CHECK(dp420_backup(ctx, repo, &bo, old) == 0);
  CHECK(old->blocks_changed == 0);
  CHECK(old_result[offsetof(dp420_backup_result_t, bytes_sent)] == 0xAB);
  CHECK(old_result[sizeof(old_result) - 1] == 0xAB);
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(br.bytes_sent == 0 && br.reconnects == 0);
  CHECK(br.blocks_healed == 0);
  /* The default is auto: it names its codec and says why. */
  CHECK(br.compression_auto == 1 && br.compression[0] != '\0');
  CHECK(br.compression_measured != NULL && strstr(br.compression_measured, "\"reason\"") != NULL);
  /* ... and a caller built before the compression fields: they stay untouched. */
  memset(old_result, 0xAB, sizeof(old_result));
  old->struct_size = offsetof(dp420_backup_result_t, compression);
  CHECK(dp420_backup(ctx, repo, &bo, old) == 0);
  CHECK(old->blocks_compressed == 0);
  CHECK(old_result[offsetof(dp420_backup_result_t, compression)] == 0xAB);
  CHECK(old_result[sizeof(old_result) - 1] == 0xAB);
  bo.compression = "off";
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(br.compression_auto == 0 && strcmp(br.compression, "off") == 0);
  CHECK(br.compression_measured != NULL && br.compression_measured[0] == '\0');
  bo.compression = NULL;
  /* ... and one built before blocks_healed: its struct ends at reconnects. */
  memset(old_result, 0xAB, sizeof(old_result));
  old->struct_size = offsetof(dp420_backup_result_t, blocks_healed);
  CHECK(dp420_backup(ctx, repo, &bo, old) == 0);
  CHECK(old->reconnects == 0);
  CHECK(old_result[offsetof(dp420_backup_result_t, blocks_healed)] == 0xAB);
  /* ... and one built before the point-in-time fields: its struct ends at
   * blocks_compressed, and nothing after it is written. */
  memset(old_result, 0xAB, sizeof(old_result));
  old->struct_size = offsetof(dp420_backup_result_t, consistency);
  CHECK(dp420_backup(ctx, repo, &bo, old) == 0);
  CHECK(old_result[offsetof(dp420_backup_result_t, consistency)] == 0xAB);
  /* A current caller learns how the source was read: a file on a file system
   * without reflink, read live and quiet. */
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(strcmp(br.consistency, "live") == 0);
  CHECK(strcmp(br.snapshot_source, "none") == 0 || strcmp(br.snapshot_source, "reflink") == 0);
  CHECK(br.source_changed == 0);
  /* Options an old caller's struct does not reach are not read: a bogus
   * method past its end changes nothing. */
  unsigned char old_opts[sizeof(dp420_backup_opts_t)];
  memcpy(old_opts, &bo, sizeof(bo));
  dp420_backup_opts_t* oo = (dp420_backup_opts_t*)old_opts;
  oo->snapshot_source = "bogus";
  oo->struct_size = offsetof(dp420_backup_opts_t, snapshot_source);
  CHECK(dp420_backup(ctx, repo, oo, &br) == 0);
  oo->struct_size = sizeof(dp420_backup_opts_t);
  CHECK(dp420_backup(ctx, repo, oo, &br) == -DP420_EINVAL);
  CHECK(strstr(dp420_errmsg(ctx), "--snapshot-source") != NULL);
  /* ... and one built before blocks_deduplicated: it ends at hold_ms. */
  memset(old_result, 0xAB, sizeof(old_result));
  old->struct_size = offsetof(dp420_backup_result_t, blocks_deduplicated);
  CHECK(dp420_backup(ctx, repo, &bo, old) == 0);
  CHECK(old->blocks_compressed == 0);
  CHECK(old_result[offsetof(dp420_backup_result_t, blocks_deduplicated)] == 0xAB);
  /* The same source as another volume: every non-zero block is shared through
   * the dedup index, none stored; with no_dedup, every one is stored. */
  bo.volume = "vol1-clone";
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(br.blocks_deduplicated == br.blocks_total - br.blocks_zero);
  CHECK(br.blocks_stored == 0);
  bo.volume = "vol1-copy";
  bo.no_dedup = 1;
  CHECK(dp420_backup(ctx, repo, &bo, &br) == 0);
  CHECK(br.blocks_deduplicated == 0);
  CHECK(br.blocks_stored == br.blocks_total - br.blocks_zero);
  bo.no_dedup = 0;
  bo.volume = "vol1";

  CHECK(strcmp(dp420_strerror(-DP420_ECORRUPT), "damaged data") == 0);
  CHECK(strstr(dp420_strerror(-DP420_ENET), "network") != NULL);
  CHECK(strstr(dp420_strerror(DP420_ESKEW), "clock") != NULL);
  CHECK(strcmp(dp420_strerror(-DP420_EKEY), "wrong passphrase or key file") == 0);
  CHECK(dp420_repo_clock_offset_ns(repo) == 0);
  TestClients(ctx, work);
  TestKeys(ctx, work);
  TestBounds(ctx, repo, src, work);
  TestConnectRefusals(ctx, work);
  TestServer(ctx, work, repo_path);
  dp420_repo_close(repo);
  dp420_ctx_free(ctx);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
  if (system(cmd) != 0) ++g_failed;
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
