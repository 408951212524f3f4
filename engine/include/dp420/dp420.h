/*
 * dp420.h — the stable C API of the dp420 backup engine.
 *
 * dp420 backs up volumes (regular files or block devices) block by block into
 * a repository, incrementally, and restores any snapshot bit-exact.
 *
 * Conventions
 *   - Every function that can fail returns 0 or a negative DP420_E* code; the
 *     detail ("which path, which snapshot, what was wrong") is in
 *     dp420_errmsg(ctx) until the next call on that context.
 *   - Handles are opaque. Strings are UTF-8, NUL-terminated, owned by the
 *     library when returned, and valid until the handle that returned them is
 *     freed (or, for dp420_errmsg, until the next call on the context).
 *   - Option structs start with `struct_size`: set it to sizeof(the struct) so
 *     later versions can add fields without breaking binaries built today.
 *     Initialise them with the dp420_*_opts_init() functions.
 *   - No C++ exception crosses this API.
 *
 * Thread safety
 *   A dp420_ctx_t must be used by one thread at a time. dp420_cancel() is the
 *   exception: it may be called from any thread or a signal handler. Different
 *   contexts may run operations concurrently, on the same repository too
 *   (backups of one volume exclude each other with a lock: DP420_EBUSY).
 */
#ifndef DP420_DP420_H_
#define DP420_DP420_H_

#include <stddef.h>
#include <stdint.h>

#if defined(DP420_BUILDING_LIBRARY)
#define DP420_EXPORT __attribute__((visibility("default")))
#else
#define DP420_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DP420_VERSION_MAJOR 0
#define DP420_VERSION_MINOR 1
#define DP420_VERSION_PATCH 0
#define DP420_MAKE_VERSION(maj, min, pat) (((maj) << 16) | ((min) << 8) | (pat))
#define DP420_VERSION \
  DP420_MAKE_VERSION(DP420_VERSION_MAJOR, DP420_VERSION_MINOR, DP420_VERSION_PATCH)

/* Error codes (returned negated). */
enum {
  DP420_OK = 0,
  DP420_EINVAL = 1,    /* invalid argument */
  DP420_ENOENT = 2,    /* repository, volume, snapshot or source not found */
  DP420_EIO = 3,       /* I/O error */
  DP420_ECORRUPT = 4,  /* stored data fails its checks */
  DP420_ENOSPC = 5,    /* no space left on a device */
  DP420_EVERSION = 6,  /* format newer than this library */
  DP420_EEXIST = 7,    /* refused: would overwrite, or remove what is kept */
  DP420_EBUSY = 8,     /* locked by another process */
  DP420_ENOMEM = 9,    /* out of memory (or RLIMIT_MEMLOCK) */
  DP420_EPERM = 10,    /* permission denied */
  DP420_ECANCELED = 11,/* dp420_cancel() was called */
  DP420_EINTERNAL = 12,/* a bug in dp420 */
  DP420_ENET = 13,     /* network: peer unreachable, connection lost, protocol error */
  DP420_ESKEW = 14,    /* this clock and the server's differ beyond the allowed skew */
  DP420_EKEY = 15      /* a passphrase or key file that opens none of the repository's key slots */
};

typedef struct dp420_ctx dp420_ctx_t;
typedef struct dp420_repo dp420_repo_t;
typedef struct dp420_snapshot_list dp420_snapshot_list_t;

/* Progress of a long operation; called on the calling thread. */
typedef struct dp420_progress {
  const char* phase;     /* "backup", "restore", "verify" */
  uint64_t bytes_done;
  uint64_t bytes_total;
} dp420_progress_t;
typedef void (*dp420_progress_fn)(void* user, const dp420_progress_t* progress);

/* Library version (DP420_VERSION of the library actually loaded). */
DP420_EXPORT uint32_t dp420_version(void);
DP420_EXPORT const char* dp420_version_string(void);
/* A static, human-readable name of an error code (either sign). */
DP420_EXPORT const char* dp420_strerror(int code);

/* Contexts: error state, progress callback, cancellation. */
DP420_EXPORT dp420_ctx_t* dp420_ctx_new(void);
DP420_EXPORT void dp420_ctx_free(dp420_ctx_t* ctx);
DP420_EXPORT const char* dp420_errmsg(const dp420_ctx_t* ctx);
DP420_EXPORT void dp420_set_progress(dp420_ctx_t* ctx, dp420_progress_fn fn, void* user);
/* Asks the running operation on `ctx` to stop; it returns -DP420_ECANCELED
 * and leaves the repository as it was. Async-signal-safe. */
DP420_EXPORT void dp420_cancel(dp420_ctx_t* ctx);

/* Repositories. `path` is made absolute. An encrypted repository is opened
 * (and, at init, its first key slot made) with the context's key source:
 * dp420_ctx_set_passphrase_file, dp420_ctx_set_repo_key_file or
 * dp420_ctx_set_passphrase_prompt (-DP420_EKEY when it opens no key slot,
 * -DP420_EINVAL when none is set). */
DP420_EXPORT int dp420_repo_init(dp420_ctx_t* ctx, const char* path);

typedef struct dp420_init_opts {
  size_t struct_size;
  /* "aes-256-gcm" or "none" (NULL or ""): records, table pages and manifests
   * encrypted at rest with a random master key wrapped by key slots. */
  const char* encryption;
} dp420_init_opts_t;

DP420_EXPORT void dp420_init_opts_init(dp420_init_opts_t* opts);
DP420_EXPORT int dp420_repo_init_with(dp420_ctx_t* ctx, const char* path,
                                      const dp420_init_opts_t* opts);
DP420_EXPORT int dp420_repo_open(dp420_ctx_t* ctx, const char* path, dp420_repo_t** out);
DP420_EXPORT void dp420_repo_close(dp420_repo_t* repo);
/* Brings a format-1 repository (seals without a key) to the current format:
 * every manifest is checked and re-sealed with the repository key and every
 * volume gets its head. Run alone; safe to run again after an interruption.
 * `from_version` (optional) receives the format it had; an up-to-date
 * repository is left as it is. -DP420_ECORRUPT when a manifest fails its old
 * seal or chain, or the repository looks downgraded. Since 0.3. */
DP420_EXPORT int dp420_repo_upgrade(dp420_ctx_t* ctx, const char* path, uint32_t* from_version,
                                    uint64_t* manifests_resealed);

/* ---- Remote repositories ----------------------------------------------------
 * dp420_repo_connect opens a repository served by dp420_serve() (`dp420
 * serve`) on another host: it reads the client's key, connects to `address`,
 * authenticates both ways and measures the clock offset against the server.
 * The handle works with dp420_backup, dp420_snapshots, dp420_restore and
 * dp420_verify exactly like a local one (the client sees only its own
 * volumes, unless its role is "admin"); release it with dp420_repo_close().
 * dp420_cancel() and the progress callback of the context an operation runs
 * on apply to remote operations too.
 *
 * The key file must be mode 0600 (or stricter): one readable by group or
 * others is refused with -DP420_EPERM naming the file. Keys are never passed
 * as strings.
 * Errors: -DP420_EINVAL (no address, client or key file), -DP420_ENOENT (key
 * file missing), -DP420_EPERM (key file mode, or the server refused the
 * client's credentials), -DP420_ENET (server unreachable or not speaking the
 * protocol; the message names the address), -DP420_EVERSION,
 * -DP420_ECANCELED. A backup whose clock offset exceeds max_clock_skew_ms
 * fails with -DP420_ESKEW before it reads the source. */
typedef struct dp420_remote_opts {
  size_t struct_size;
  const char* address;            /* required: "HOST:PORT" ("[v6]:PORT" for IPv6) */
  const char* client;             /* required: the client name registered on the server */
  const char* key_file;           /* NULL: $DP420_KEY_FILE */
  uint32_t heartbeat_interval_ms; /* 0: 5000; else 10..3600000; lost after 3 silent ones */
  uint32_t max_clock_skew_ms;     /* 0: 500; else at most 3600000 */
  uint32_t retry_ms;              /* reconnect attempts after a loss, this long; 0: 60000;
                                     else at most 86400000 */
  const char* cache_dir;          /* NULL: $DP420_CACHE_DIR, else a per-user default */
} dp420_remote_opts_t;

DP420_EXPORT void dp420_remote_opts_init(dp420_remote_opts_t* opts);
DP420_EXPORT int dp420_repo_connect(dp420_ctx_t* ctx, const dp420_remote_opts_t* opts,
                                    dp420_repo_t** out);
/* The server's clock minus this host's, in nanoseconds, measured at connect;
 * 0 for a local repository. */
DP420_EXPORT int64_t dp420_repo_clock_offset_ns(const dp420_repo_t* repo);

/* Bounds of the numeric options. The library refuses a value outside them
 * with -DP420_EINVAL and a message naming the option, its value and the
 * allowed range. Worker threads are further bounded by a buffer budget of
 * DP420_BUFFER_BUDGET bytes per operation, at 6 x max(block size, 1 MiB)
 * per thread (e.g. 170 threads at blocks up to 1 MiB, 42 at 4 MiB); 0
 * picks the CPUs available within both bounds. A remote backup has at most
 * DP420_MAX_REMOTE_THREADS (one connection each). */
#define DP420_MAX_THREADS 256
#define DP420_MAX_REMOTE_THREADS 64
#define DP420_BUFFER_BUDGET (1ull << 30)
#define DP420_MIN_BLOCK_SIZE 4096       /* and a power of two */
#define DP420_MAX_BLOCK_SIZE 4194304
#define DP420_MAX_READ_THROUGH 4194304
#define DP420_MIN_HEARTBEAT_MS 10
#define DP420_MAX_HEARTBEAT_MS 3600000
#define DP420_MAX_CLOCK_SKEW_MS 3600000
#define DP420_MAX_RETRY_MS 86400000
#define DP420_MAX_SECONDS_PER_POINT 60

/* Backup. The first backup of a volume is full; later ones are incremental
 * against the volume's latest snapshot. */
typedef struct dp420_backup_opts {
  size_t struct_size;
  const char* volume;     /* required: 1-64 chars of A-Z a-z 0-9 . _ - */
  const char* source;     /* required: regular file or block device */
  uint32_t block_size;    /* 0: the chain's, or 65536 for a new volume */
  uint32_t threads;       /* 0: the CPUs available; see DP420_MAX_THREADS */
  /* The snapshot's time, RFC 3339 ("2026-12-01T03:00:00Z", an offset like
   * +01:00 instead of Z, a fraction of a second allowed); NULL or "" for now.
   * Read only when struct_size covers it. Not in the future and not before the
   * volume's newest snapshot; a local repository only: a server stamps a remote
   * snapshot with its own clock. DP420_EINVAL otherwise. */
  const char* time;
  /* How changed blocks are compressed: "auto" (the default: NULL, "", or a
   * struct_size that does not cover this field), "off", "lz4", "lz4:ACCEL"
   * (1-64), "zstd" (level 3) or "zstd:LEVEL" (1-19). A block is stored
   * compressed only when that saves a 4 KiB slot. "auto" measures the device's
   * read rate and the codecs on a sample of the volume, picks the strongest
   * codec that keeps up with the device (none when none does), and steps down
   * during the backup when compressing holds the workers back (the result says
   * what it chose and why). Format-3 repositories; a format-2 repository stores
   * every block raw. With a remote repository, "auto" means "off" and a codec
   * is refused (DP420_EINVAL): records go over the network raw. */
  const char* compression;
  /* How the source is read at one point in time: "auto" (NULL or ""),
   * "reflink", "fsfreeze", "hook" or "none" (the live source); see the
   * README, "Point in time". Read only when struct_size covers them; an
   * older caller's backups read the live source. */
  const char* snapshot_source;
  const char* freeze_mount;   /* fsfreeze: the mount point of the file system on the source */
  uint32_t max_freeze_ms;     /* longest freeze; 0: 7000 */
  uint32_t hook_timeout_ms;   /* longest run of each hook; 0: 300000 */
  const char* pre_hook;       /* run with /bin/sh -c before the point in time; NULL: none */
  const char* post_hook;      /* after it; runs whenever the pre hook ran */
  /* Nonzero: do not look changed blocks up in the repository's dedup index
   * (blocks another volume stores already are stored again) and add nothing
   * to it. Read only when struct_size covers it; local repositories only. */
  int no_dedup;
} dp420_backup_opts_t;

typedef struct dp420_backup_result {
  size_t struct_size;
  char snapshot_id[17];
  char parent[17];        /* "" for a full backup */
  char checksum_sha256[65];
  uint64_t sequence;
  uint64_t volume_size;
  uint32_t block_size;
  uint64_t bytes_read;
  uint64_t blocks_total;
  uint64_t blocks_changed;
  uint64_t blocks_zero;
  uint64_t blocks_stored;
  uint64_t bytes_written;
  double seconds;
  uint32_t threads;
  int direct_io;           /* source read with O_DIRECT */
  int registered_buffers;  /* io_uring registered buffers in use */
  /* Network backups (dp420_repo_connect); 0 for a local one. Filled only
   * when struct_size covers them. */
  uint64_t bytes_sent;            /* frame bytes put on the wire (headers and data) */
  uint64_t bytes_sent_zerocopy;   /* block bytes sent without a copy (send_zc) */
  uint64_t bytes_zerocopy_copied; /* ... of which the kernel copied anyway */
  uint64_t bytes_resent;          /* block bytes sent again after a reconnect */
  uint64_t reconnects;
  /* Blocks the parent held in packs gone from the repository, read again
   * from the source and stored anew (local backups). Filled only when
   * struct_size covers it. */
  uint64_t blocks_healed;
  /* Changed blocks stored compressed. Filled only when struct_size covers it. */
  uint64_t blocks_compressed;
  /* How the source was read (filled only when struct_size covers them):
   * "point-in-time" or "live"; the method used ("reflink", "fsfreeze",
   * "hook", "none"); for a live read whether the source changed while it was
   * read (1), did not (0), or nothing could tell (-1); how long writes were
   * held, in ms. */
  char consistency[16];
  char snapshot_source[16];
  int source_changed;
  double hold_ms;
  /* Changed blocks found stored already (by this or another volume, through
   * the dedup index) and referenced instead of stored; not counted in
   * blocks_stored. Filled only when struct_size covers it. */
  uint64_t blocks_deduplicated;
  /* The codec the backup started with ("off", "lz4", "zstd:3", ...), whether
   * "auto" chose it, and what "auto" measured and why it chose so: a JSON
   * object (reason, device_read_bytes_per_s, device_read, workers,
   * hash_bytes_per_s, sample_blocks, codecs, stepped_down_to when compressing
   * held the workers back), "" unless auto, owned by the context and valid
   * until the next call on it. Filled only when struct_size covers them. */
  char compression[16];
  int compression_auto;
  const char* compression_measured;
  /* What went wrong without failing the backup, "" when nothing did: the
   * dedup index could not be opened or updated (this or later backups then
   * share fewer blocks; the snapshot is whole either way). Owned by the context and valid until
   * the next call on it. Filled only when struct_size covers it. */
  const char* warning;
} dp420_backup_result_t;

DP420_EXPORT void dp420_backup_opts_init(dp420_backup_opts_t* opts);
DP420_EXPORT int dp420_backup(dp420_ctx_t* ctx, dp420_repo_t* repo,
                              const dp420_backup_opts_t* opts, dp420_backup_result_t* result);

/* Snapshots of a volume (all volumes when `volume` is NULL), oldest first.
 * On failure *out is NULL. */
DP420_EXPORT int dp420_snapshots(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume,
                                 dp420_snapshot_list_t** out);
DP420_EXPORT size_t dp420_snapshot_count(const dp420_snapshot_list_t* list);
DP420_EXPORT const char* dp420_snapshot_id(const dp420_snapshot_list_t* list, size_t i);
DP420_EXPORT const char* dp420_snapshot_volume(const dp420_snapshot_list_t* list, size_t i);
/* The snapshot's manifest as one JSON object (see docs/FORMAT.md). */
DP420_EXPORT const char* dp420_snapshot_json(const dp420_snapshot_list_t* list, size_t i);
DP420_EXPORT void dp420_snapshot_list_free(dp420_snapshot_list_t* list);

/* Restore. Every block and the volume checksum are verified on the way. */
typedef struct dp420_restore_opts {
  size_t struct_size;
  const char* volume;     /* required */
  const char* snapshot;   /* id, unique prefix (>= 4) or "latest"; NULL = "latest" */
  const char* target;     /* required: file (written sparse) or block device */
  int force;              /* overwrite a non-empty file or a block device */
  uint32_t threads;       /* 0: the CPUs available; see DP420_MAX_THREADS */
  /* Stale pack bytes one read may run through to join the next record it
   * needs (at most 4 MiB): fewer, larger reads for more bytes, for disks that
   * seek. 0 (the default) reads only what the snapshot holds. Local
   * repositories only: a remote handle refuses a non-zero value. Callers
   * built before this field existed pass a smaller struct_size and get 0. */
  uint64_t read_through;
} dp420_restore_opts_t;

typedef struct dp420_restore_result {
  size_t struct_size;
  char snapshot_id[17];
  char checksum_sha256[65];
  uint64_t volume_size;
  uint64_t bytes_written;
  uint64_t blocks_restored;
  uint64_t blocks_zero;
  double seconds;
} dp420_restore_result_t;

DP420_EXPORT void dp420_restore_opts_init(dp420_restore_opts_t* opts);
DP420_EXPORT int dp420_restore(dp420_ctx_t* ctx, dp420_repo_t* repo,
                               const dp420_restore_opts_t* opts, dp420_restore_result_t* result);

/* Verify. Each damaged object is reported once through `on_problem`, with
 * the ids of the snapshots it breaks (comma-separated, may be ""). Returns 0
 * when verify ran (check problems_found), or -DP420_E* when it could not. */
typedef void (*dp420_problem_fn)(void* user, const char* object, const char* message,
                                 const char* snapshots);
typedef struct dp420_verify_opts {
  size_t struct_size;
  const char* volume;     /* NULL: every volume */
  const char* snapshot;   /* NULL: every snapshot */
  int read_data;          /* re-read and re-hash every stored block */
  dp420_problem_fn on_problem;
  void* user;
} dp420_verify_opts_t;

typedef struct dp420_verify_result {
  size_t struct_size;
  uint64_t snapshots_checked;
  uint64_t packs_checked;
  uint64_t pages_checked;
  uint64_t blocks_checked;
  uint64_t bytes_read;
  uint64_t unreferenced_packs;
  uint64_t problems_found;
  uint64_t snapshots_broken;
} dp420_verify_result_t;

DP420_EXPORT void dp420_verify_opts_init(dp420_verify_opts_t* opts);
DP420_EXPORT int dp420_verify(dp420_ctx_t* ctx, dp420_repo_t* repo,
                              const dp420_verify_opts_t* opts, dp420_verify_result_t* result);
/* The check that needs no key (`dp420 verify --stored-only`): every pack of
 * the local repository at `repo_path` read back against its own trailer
 * (header, footer and index CRCs, record bounds, each record's stored bytes
 * against the trailer's digest), an encrypted repository's without its key.
 * It cannot tell which snapshots a record belongs to, nor whether a record
 * opens under the key: the keyed dp420_verify with read_data does. `opts`
 * gives on_problem and user (volume, snapshot and read_data must be unset);
 * result: packs_checked, blocks_checked (every record), bytes_read,
 * problems_found. */
DP420_EXPORT int dp420_verify_stored(dp420_ctx_t* ctx, const char* repo_path,
                                     const dp420_verify_opts_t* opts,
                                     dp420_verify_result_t* result);

/* Repair (local repositories). Brings a volume whose history cannot be
 * trusted (a missing, damaged or rolled-back newest snapshot, a fork, a
 * snapshot whose data is gone) back to the newest snapshot its data supports:
 * what cannot stay is moved to REPO/quarantine/VOLUME/STAMP/, never deleted,
 * and the volume's head is rewritten. On success *report_json is one JSON
 * object: volume, problems[], newest {snapshot_id, sequence} or null,
 * quarantined [{file, reason}], quarantine_dir, head_rewritten, dry_run;
 * the caller frees it with dp420_free. Since 0.3. */
typedef struct dp420_repair_opts {
  size_t struct_size;
  const char* volume;  /* required */
  int dry_run;         /* report only */
  int read_data;       /* re-read every block of the candidates */
} dp420_repair_opts_t;

DP420_EXPORT void dp420_repair_opts_init(dp420_repair_opts_t* opts);
DP420_EXPORT int dp420_repair(dp420_ctx_t* ctx, dp420_repo_t* repo,
                              const dp420_repair_opts_t* opts, char** report_json);

/* ---- Forget and protect (local repositories; since 0.4) ----------------------
 * dp420_forget removes snapshots from volumes' histories, either by a
 * retention policy (each keep_* rule keeps the newest snapshot of each of its
 * last N periods: hours, calendar days, ISO weeks, months, years, in the
 * local time zone; keep_last the N newest; keep_within every snapshot taken
 * within that span before the newest one; the union is kept) or by naming
 * them. The newest snapshot of a volume and protected snapshots are always
 * kept (naming one is refused with -DP420_EEXIST). The snapshot hash chain
 * stays provable: a kept snapshot whose parent goes gets a link, sealed with
 * the repository key, to its nearest kept ancestor. No data is deleted:
 * dp420_prune reclaims what no snapshot references.
 *
 * A policy without any rule is refused (-DP420_EINVAL): it would forget
 * everything. Forget waits up to lock_wait_ms for a running backup of the
 * volume. Across volumes (volume NULL), a volume whose history cannot be
 * trusted is left unchanged and reported in `errors`; the call then returns
 * that volume's code after filling `result`. */
typedef struct dp420_forget_opts {
  size_t struct_size;
  const char* volume;   /* NULL: every volume (policy only) */
  /* Rules: 0 = not given, N > 0, or -1 = no limit. */
  int32_t keep_last;
  int32_t keep_hourly;
  int32_t keep_daily;
  int32_t keep_weekly;
  int32_t keep_monthly;
  int32_t keep_yearly;
  const char* keep_within;         /* NULL, or a span such as "7d", "1y6m", "36h", "2w" */
  const char* const* snapshots;    /* ids or unique prefixes to forget (needs volume) */
  size_t snapshot_count;           /* 0: apply the policy */
  int dry_run;                     /* decide and report; change nothing */
  uint32_t lock_wait_ms;           /* 0: one hour */
} dp420_forget_opts_t;

typedef struct dp420_forget_item {
  char volume[72];       /* CLIENT/VOLUME for a volume of a server's client */
  char snapshot_id[17];
  uint64_t sequence;
  uint64_t created_unix_ns;
  int keep;              /* 1 kept, 0 forgotten */
  int is_protected;
  char reasons[96];      /* why kept, comma-separated: protected, newest, last, hourly,
                            daily, weekly, monthly, yearly, within, not named */
} dp420_forget_item_t;

typedef struct dp420_forget_result {
  size_t struct_size;
  uint64_t forgotten;
  uint64_t kept;
  uint64_t links_written;
  uint64_t leftovers_removed;    /* files an earlier, interrupted forget left */
  size_t item_count;
  dp420_forget_item_t* items;    /* by volume, newest first; dp420_forget_result_free */
  size_t error_count;            /* volumes left unchanged */
  char* errors;                  /* NULL, or one "VOLUME: message" per line */
} dp420_forget_result_t;

DP420_EXPORT void dp420_forget_opts_init(dp420_forget_opts_t* opts);
DP420_EXPORT int dp420_forget(dp420_ctx_t* ctx, dp420_repo_t* repo,
                              const dp420_forget_opts_t* opts, dp420_forget_result_t* result);
/* Frees what dp420_forget stored in `result` (items, errors); idempotent. */
DP420_EXPORT void dp420_forget_result_free(dp420_forget_result_t* result);

/* Protects (protect = 1) or unprotects (0) a snapshot of `volume` (id or
 * unique prefix): a protected snapshot is never forgotten by a policy, and
 * naming it to dp420_forget is refused. The full id goes to id_out when
 * given. Idempotent. */
DP420_EXPORT int dp420_protect(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume,
                               const char* snapshot, int protect, char id_out[17]);
/* Prune: deletes the packs no snapshot references and repacks the packs
 * whose unused share exceeds max_unused_percent (their live records are
 * copied and the old references redirected through relocation files).
 * Progress phases "mark" (manifests walked) and "repack" (bytes copied);
 * phase "wait" (0 of 0) once when the delete phase has to wait for running
 * backups, restores or verifies. On success *result holds the
 * counters; its warnings (packs left alone, and why) are freed with
 * dp420_prune_result_free. With a remote handle prune runs on the server, for
 * an admin client only (-DP420_EPERM otherwise). -DP420_EBUSY when another
 * prune runs; -DP420_ECORRUPT (nothing changed) when a manifest, a table page
 * or a relocation file cannot be read. Since 0.4. */
typedef struct dp420_prune_opts {
  size_t struct_size;
  double max_unused_percent;  /* 0..100; dp420_prune_opts_init sets 10 */
  int dry_run;                /* report only */
} dp420_prune_opts_t;

typedef struct dp420_prune_result {
  size_t struct_size;
  int dry_run;
  uint64_t snapshots;            /* manifests marked (snapshots/ and quarantine/) */
  uint64_t packs_before;
  uint64_t pack_bytes_before;
  uint64_t packs_in_progress;    /* named by a running backup's journal: kept */
  uint64_t packs_deleted;
  uint64_t packs_rewritten;
  uint64_t packs_created;
  uint64_t records_copied;
  uint64_t bytes_copied;
  uint64_t bytes_freed;
  uint64_t bytes_referenced;
  uint64_t bytes_unused;
  uint64_t relocations_written;
  uint64_t relocations_deleted;
  size_t warning_count;
  char* warnings;                /* NULL, or one per line; dp420_prune_result_free */
} dp420_prune_result_t;

DP420_EXPORT void dp420_prune_opts_init(dp420_prune_opts_t* opts);
DP420_EXPORT int dp420_prune(dp420_ctx_t* ctx, dp420_repo_t* repo, const dp420_prune_opts_t* opts,
                             dp420_prune_result_t* result);
DP420_EXPORT void dp420_prune_result_free(dp420_prune_result_t* result);

/* Space statistics: per snapshot the bytes it references, holds alone and
 * shares; per repository the pack bytes, the referenced bytes and what prune
 * can reclaim. `volume` (may be null) limits the snapshots listed. With a
 * remote handle both run on the server, for an admin client only
 * (-DP420_EPERM otherwise). Since 0.4. */
typedef struct dp420_snapshot_space {
  char volume[72];
  char snapshot_id[17];
  uint64_t sequence;
  char created[40];
  uint64_t bytes_referenced;
  uint64_t bytes_unique;      /* referenced by no other snapshot: what forgetting it frees */
  uint64_t bytes_shared;
} dp420_snapshot_space_t;

typedef struct dp420_stats_result {
  size_t struct_size;
  uint64_t packs;
  uint64_t pack_bytes;
  uint64_t bytes_referenced;
  uint64_t bytes_reclaimable;
  size_t snapshot_count;
  dp420_snapshot_space_t* snapshots;  /* dp420_stats_result_free */
} dp420_stats_result_t;

DP420_EXPORT int dp420_stats(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* volume,
                             dp420_stats_result_t* result);
DP420_EXPORT void dp420_stats_result_free(dp420_stats_result_t* result);

/* ---- Storage benchmark ------------------------------------------------------
 * dp420_bench measures what a backup of `source` can reach on this machine:
 * O_DIRECT read throughput and per-request latency over queue depths and
 * request sizes, the hashing kernels on this CPU, the read -> hash -> diff
 * pipeline (with and without SHA-256 per block), and, with `write_test`,
 * O_DIRECT write throughput and fdatasync on a scratch file. It ends with a
 * verdict: what limits the pipeline, a block size and a thread count.
 *
 * `source` is opened read-only and never written. `write_test` must not exist
 * (-DP420_EEXIST otherwise, before anything is measured); it is created,
 * sized min(1 GiB, free space / 4) and deleted again, also on failure and on
 * dp420_cancel().
 *
 * On success *report_json is one JSON object (device, cpu, settings, read,
 * kernels, pipeline, write and write_file when measured, verdict, seconds;
 * GB/s are 10^9 bytes per second), owned by the caller: release it with
 * dp420_free(). Progress phases are "bench read", "bench kernels",
 * "bench pipeline" and "bench write"; there bytes_done and bytes_total count
 * measured points, not bytes.
 * Errors: -DP420_EINVAL, -DP420_ENOENT (source, or write_test's directory),
 * -DP420_EEXIST, -DP420_ENOSPC, -DP420_EIO, -DP420_ENOMEM, -DP420_ECANCELED. */
typedef struct dp420_bench_opts {
  size_t struct_size;
  const char* source;        /* required: regular file or block device */
  const char* write_test;    /* NULL: no write test; else a file that must not exist */
  double seconds_per_point;  /* time bound of each measured point, (0, 60]; 0: 0.5 */
  int quick;                 /* small read grid: QD 1, 32 x 64 KiB, 1 MiB */
} dp420_bench_opts_t;

DP420_EXPORT void dp420_bench_opts_init(dp420_bench_opts_t* opts);
DP420_EXPORT int dp420_bench(dp420_ctx_t* ctx, const dp420_bench_opts_t* opts,
                             char** report_json); /* caller frees with dp420_free */
/* Frees memory the library returned to the caller (dp420_bench's report). */
DP420_EXPORT void dp420_free(void* p);

/* ---- Repository server ------------------------------------------------------
 * dp420_serve serves the repository `repo` to backup agents
 * (dp420_repo_connect) on TCP `listen` ("HOST:PORT"; port 0 picks a free
 * port), authenticating them against the `clients` file
 * (dp420_client_add). It logs one line per event on stderr (one JSON object
 * per line with json_log), calls on_listening(user, port) once listening,
 * and blocks until dp420_cancel(ctx): then it stops accepting, lets running
 * sessions finish their current request, closes the rest (backups that did
 * not commit are rolled back) and returns 0.
 * Errors: -DP420_EINVAL, -DP420_ENOENT (repository or clients file),
 * -DP420_ECORRUPT (damaged clients file), -DP420_EIO (cannot listen on
 * that address), -DP420_EPERM. */
struct dp420_client_limits2; /* below */
typedef struct dp420_serve_opts {
  size_t struct_size;
  const char* repo;                /* required; made absolute */
  const char* listen;              /* required: "HOST:PORT" */
  const char* clients;             /* required: the clients file; made absolute */
  int json_log;                    /* log JSON lines instead of text */
  uint32_t heartbeat_interval_ms;  /* 0: 5000; else 10..3600000; an agent is lost after 3
                                      silent intervals */
  void (*on_listening)(void* user, uint16_t port); /* may be NULL */
  void* user;
  /* Limits (docs/PROTOCOL.md, "Limits before authentication"); 0 gives the
   * default. Callers built before these fields existed pass a smaller
   * struct_size and get the defaults. */
  uint32_t max_pending;             /* unauthenticated connections at once; 0: 256 */
  uint32_t max_pending_per_source;  /* of them from one IP address; 0: 64 */
  uint32_t handshake_timeout_ms;    /* from accept to AUTH_OK; 0: 5000 */
  uint32_t max_sessions;            /* authenticated connections at once; 0: 1024 */
  /* The per-client limits of clients whose entry does not set them; NULL,
   * or a field DP420_LIMIT_UNCHANGED or DP420_LIMIT_DEFAULT, keeps the
   * built-in default; 0 means no limit. */
  const struct dp420_client_limits2* client_defaults;
  /* Since 0.4: NULL, or a retention file (docs/FORMAT.md, "The retention
   * file") whose policies the server applies at start and on its schedule;
   * made absolute; refused (-DP420_EPERM) unless owned by this user and not
   * writable by group or others, -DP420_EINVAL when malformed. */
  const char* retention_file;
} dp420_serve_opts_t;

DP420_EXPORT void dp420_serve_opts_init(dp420_serve_opts_t* opts);
DP420_EXPORT int dp420_serve(dp420_ctx_t* ctx, const dp420_serve_opts_t* opts);

/* Clients of a server. dp420_client_add registers `name` with a fresh random
 * key in `clients_file` (created, mode 0600, when absent) and writes the key
 * to the new file `key_out` (mode 0600). `role` is "append" (NULL: back up,
 * list, restore and verify its own volumes) or "admin" (also every other
 * client's volumes, and deleting). Nothing is changed when it fails:
 * -DP420_EEXIST for a name already registered or an existing key_out,
 * -DP420_EINVAL for a bad name or role, -DP420_ENOENT for a missing
 * directory, -DP420_ECORRUPT for a damaged clients file.
 * dp420_client_remove unregisters `name` (-DP420_ENOENT when it is not
 * registered or the file is missing); its key file is left alone.
 * Paths are made absolute. */
DP420_EXPORT int dp420_client_add(dp420_ctx_t* ctx, const char* clients_file, const char* name,
                                  const char* role, const char* key_out);
DP420_EXPORT int dp420_client_remove(dp420_ctx_t* ctx, const char* clients_file,
                                     const char* name);

/* Per-client limits in the clients file (docs/FORMAT.md, "The clients
 * file"); a running server applies them to backups that begin afterwards.
 * Each field: DP420_LIMIT_UNCHANGED leaves it as it is, DP420_LIMIT_DEFAULT
 * gives the client the server's default, 0 means no limit, N > 0 is the
 * limit. dp420_client_limits_init sets every field to DP420_LIMIT_UNCHANGED.
 * dp420_client_set_limits: -DP420_ENOENT when `name` is not registered,
 * -DP420_EINVAL for a value below DP420_LIMIT_DEFAULT. */
#define DP420_LIMIT_UNCHANGED (-1)
#define DP420_LIMIT_DEFAULT (-2)
typedef struct dp420_client_limits {
  int64_t max_volumes;        /* volumes the client may own */
  int64_t max_bytes;          /* bytes its snapshots may have written (quota) */
  int64_t max_backups;        /* its backups at once, running or awaiting resume */
  int64_t max_waiting;        /* its backups awaiting their agent's resume */
  int64_t max_stripe_memory;  /* bytes of receive buffers its stripes may pin */
} dp420_client_limits_t;

DP420_EXPORT void dp420_client_limits_init(dp420_client_limits_t* limits);
DP420_EXPORT int dp420_client_set_limits(dp420_ctx_t* ctx, const char* clients_file,
                                         const char* name, const dp420_client_limits_t* limits);

/* The limits with a struct_size, so that later versions can add fields
 * (dp420_client_limits_t has none: it stays as it is):
 * dp420_client_set_limits2 is dp420_client_set_limits for them.
 * dp420_client_limits2_init sets struct_size and every field to
 * DP420_LIMIT_UNCHANGED. */
typedef struct dp420_client_limits2 {
  size_t struct_size;
  int64_t max_volumes;
  int64_t max_bytes;
  int64_t max_backups;
  int64_t max_waiting;
  int64_t max_stripe_memory;
  int64_t max_sessions;  /* its authenticated connections at once (each stripe is one) */
} dp420_client_limits2_t;

DP420_EXPORT void dp420_client_limits2_init(dp420_client_limits2_t* limits);
DP420_EXPORT int dp420_client_set_limits2(dp420_ctx_t* ctx, const char* clients_file,
                                          const char* name, const dp420_client_limits2_t* limits);

/* ==== Keys of encrypted repositories (since 0.5) =============================
 * An encrypted repository's master key is kept only wrapped in key slots,
 * REPO/keys/slot-NNNNNNNN.json, each under a passphrase or a key file (a
 * file of 32 random bytes, mode 0600). These functions work on a local
 * repository path.
 *
 * The secret that opens it is the context's key source, set with:
 *   dp420_ctx_set_passphrase_file: a file whose whole content is the
 *     passphrase (one trailing "\n" or "\r\n" is not part of it; empty is
 *     refused); tried on passphrase slots only.
 *   dp420_ctx_set_repo_key_file: a key file; tried on key-file slots only;
 *     refused (-DP420_EPERM) when group or others may read or write it.
 *   dp420_ctx_set_passphrase_prompt: allow (1) or not (0, the default)
 *     asking for the passphrase on the process's terminal (/dev/tty, echo
 *     off) when neither file is set.
 * A NULL or empty path clears that source; setting both files is refused
 * (-DP420_EINVAL) by the next key function. Secrets are never passed as
 * strings. At most 8 slots of the source's kind are tried, in slot id order.
 *
 * Every key function first opens the repository's master key with the key
 * source: -DP420_EKEY when the secret opens no slot (nothing is written),
 * -DP420_EINVAL when the context has no key source (the message names the
 * options), -DP420_ENOENT when the path is not a repository or has no slots,
 * -DP420_ECORRUPT when no slot could be tried because the slot files of the
 * source's kind are damaged. Changes hold an exclusive lock on
 * REPO/locks/.keys.lock (-DP420_EBUSY after 10 s of waiting for it).
 *
 * New secrets (dp420_key_add, dp420_key_passwd): exactly one of
 * new_passphrase_file, new_key_file (created with 32 random bytes, mode
 * 0600, when it does not exist) and new_prompt (asks twice on the terminal;
 * the two must match). */
DP420_EXPORT int dp420_ctx_set_passphrase_file(dp420_ctx_t* ctx, const char* path);
DP420_EXPORT int dp420_ctx_set_repo_key_file(dp420_ctx_t* ctx, const char* path);
DP420_EXPORT int dp420_ctx_set_passphrase_prompt(dp420_ctx_t* ctx, int allow);

#define DP420_KEY_SLOT_PASSPHRASE 1
#define DP420_KEY_SLOT_KEY_FILE 2
#define DP420_KEY_SLOT_DAMAGED 0

/* One slot of dp420_key_list (no secret). */
typedef struct dp420_key_slot {
  uint32_t slot_id;
  int kind;            /* DP420_KEY_SLOT_PASSPHRASE, _KEY_FILE, or _DAMAGED */
  uint64_t scrypt_n;   /* passphrase slots: scrypt's cost parameters */
  uint32_t scrypt_r;
  uint32_t scrypt_p;
  char created[32];    /* the slot file's mtime, RFC 3339 UTC ("2026-12-07T15:17:20Z") */
  char file[40];       /* "keys/slot-NNNNNNNN.json" */
  char damage[256];    /* damaged slots: what is wrong (may be cut short); else "" */
  int opened;          /* 1 for the slot the key source opened */
} dp420_key_slot_t;

typedef struct dp420_key_list {
  size_t struct_size;  /* sizeof(dp420_key_list_t) */
  size_t slot_count;
  dp420_key_slot_t* slots;  /* by slot id; dp420_key_list_free */
} dp420_key_list_t;

/* Every slot file of the repository at `repo_path`, the damaged ones too.
 * Set result->struct_size = sizeof(dp420_key_list_t) first; release the
 * slots with dp420_key_list_free. */
DP420_EXPORT int dp420_key_list(dp420_ctx_t* ctx, const char* repo_path,
                                dp420_key_list_t* result);
DP420_EXPORT void dp420_key_list_free(dp420_key_list_t* result);
/* Adds a slot under a new secret; *slot_id_out (may be NULL) receives its id.
 * -DP420_EINVAL when that kind already has 8 slots. */
DP420_EXPORT int dp420_key_add(dp420_ctx_t* ctx, const char* repo_path,
                               const char* new_passphrase_file, const char* new_key_file,
                               int new_prompt, uint32_t* slot_id_out);
/* Removes slot `slot_id`; -DP420_EINVAL when there is no such slot or no
 * other intact slot would be left. */
DP420_EXPORT int dp420_key_remove(dp420_ctx_t* ctx, const char* repo_path, uint32_t slot_id);
/* Changes the passphrase of passphrase slot `slot_id` (0: the slot the key
 * source opened) to a new one, atomically (the slot file is replaced by a
 * rename); *slot_id_out (may be NULL) receives the id changed.
 * -DP420_EINVAL for a key-file slot. */
DP420_EXPORT int dp420_key_passwd(dp420_ctx_t* ctx, const char* repo_path, uint32_t slot_id,
                                  const char* new_passphrase_file, int new_prompt,
                                  uint32_t* slot_id_out);
/* The master key as a printable recovery form (see docs/SECURITY.md):
 * *text_out is NUL-terminated text the caller frees with dp420_free (it holds
 * the key: overwrite it first). */
DP420_EXPORT int dp420_key_export_paper(dp420_ctx_t* ctx, const char* repo_path,
                                        char** text_out);
/* Adds a slot under a new secret with the master key read from a recovery
 * form (`paper_text`, as dp420_key_export_paper printed it, typed back in):
 * for when every secret that opened a slot is lost. Needs no key source.
 * -DP420_EINVAL naming the line of a form that does not read (a mistyped
 * digit, a missing line) or that belongs to another repository; -DP420_EKEY
 * when the key it holds does not open this repository; nothing is written
 * then. *slot_id_out (may be NULL) receives the new slot's id. */
DP420_EXPORT int dp420_key_recover(dp420_ctx_t* ctx, const char* repo_path,
                                   const char* paper_text, const char* new_passphrase_file,
                                   const char* new_key_file, int new_prompt,
                                   uint32_t* slot_id_out);
/* ==== End of keys of encrypted repositories ================================= */

/* ---- Consistency groups (since 0.6) ------------------------------------------
 * One point in time across volumes of several nodes, published by one commit
 * or not at all (docs/ARCHITECTURE.md "Consistency groups").
 *
 * dp420_agent runs a member on this node (`dp420 agent`): it connects to the
 * server as `remote`'s client, answers for its volumes ("NAME=SOURCE[,KEY=
 * VALUE]...": snapshot-source, freeze-mount, max-freeze (ms), pre-hook,
 * post-hook, hook-timeout (ms), block-size, threads), reconnects after a loss,
 * and blocks until dp420_cancel(ctx); then every hold ends and 0 is returned.
 * on_event (may be NULL) gets one line per event ("connected ...", "holding
 * GROUP epoch E CLIENT:VOLUME", "cut ...", "staged ...", "committed ...",
 * "aborted ...: WHY", "lost: WHY"), on the agent's thread. state_dir (NULL: a
 * per-client folder under the cache folder) keeps the newest epoch each
 * volume saw.
 * Errors: -DP420_EINVAL (options), -DP420_EPERM (key file, or the server
 * refused the client or a volume), -DP420_ENOENT (key file), -DP420_ECORRUPT
 * (a damaged state file). */
typedef struct dp420_agent_opts {
  size_t struct_size;
  const dp420_remote_opts_t* remote;  /* required */
  const char* const* volumes;         /* required: volume_count specs */
  size_t volume_count;                /* 1..64 */
  const char* state_dir;              /* NULL: the default */
  void (*on_event)(void* user, const char* line);
  void* user;
} dp420_agent_opts_t;

DP420_EXPORT void dp420_agent_opts_init(dp420_agent_opts_t* opts);
DP420_EXPORT int dp420_agent(dp420_ctx_t* ctx, const dp420_agent_opts_t* opts);

/* dp420_group_backup asks the server `repo` (a remote handle of an admin
 * client) for one group backup of `members` ("CLIENT:VOLUME", each served by
 * a connected agent): prepare, cut, transfer, one commit. It returns when the
 * group committed (0) or aborted (the reason's code: -DP420_ENET for a member
 * lost, -DP420_EBUSY for a deadline or a fenced epoch, ...); either way
 * *summary_json (may be NULL; free with dp420_free) receives the server's
 * report: group, epoch, outcome, error, group_snapshot_id, prepare_ms, cut_ms,
 * total_ms, and per member its snapshot_id, manifest_sha256 and clock skew.
 * Timeouts of 0 take the defaults (prepare 10 s, cut 5 s, heartbeat 5 s
 * (at least 1 s: agents beat every second), skew 500 ms, transfer 1 day).
 * One group backup at a time per server: another one meanwhile gets
 * -DP420_EBUSY naming the running group. */
typedef struct dp420_group_backup_opts {
  size_t struct_size;
  const char* group;                /* required: 1-64 of A-Z a-z 0-9 . _ - */
  const char* const* members;       /* required: member_count "CLIENT:VOLUME" */
  size_t member_count;              /* 1..64 */
  uint32_t prepare_ms, cut_ms, heartbeat_ms, max_skew_ms;
  uint32_t transfer_ms;             /* every member durable within this of the cut; 0: 1 day */
} dp420_group_backup_opts_t;

DP420_EXPORT void dp420_group_backup_opts_init(dp420_group_backup_opts_t* opts);
DP420_EXPORT int dp420_group_backup(dp420_ctx_t* ctx, dp420_repo_t* repo,
                                    const dp420_group_backup_opts_t* opts, char** summary_json);
/* The group snapshots of `group` (NULL or "": every group) of a local
 * repository, or of a remote one for an admin client: *json (free with
 * dp420_free) is {"groups": [group manifests, oldest epoch first],
 * "damaged": [{"file", "problem"}]}. */
DP420_EXPORT int dp420_group_snapshots(dp420_ctx_t* ctx, dp420_repo_t* repo, const char* group,
                                       char** json);

#ifdef __cplusplus
}
#endif

#endif /* DP420_DP420_H_ */
