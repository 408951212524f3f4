// The C API of the keys of encrypted repositories (engine/core/keystore.h):
// the context's key source and the key commands on a local repository path.
#include <cstdlib>
#include <cstring>
#include <string>

#include "dp420/dp420.h"
#include "engine/capi/internal.h"
#include "engine/control/topology.h"
#include "engine/core/keystore.h"
#include "engine/core/repo.h"

using namespace dp420capi;  // NOLINT(google-build-using-namespace): this library's own helpers

namespace {

using dp420::Result;
using dp420::Status;

// A repository opened far enough for its keys: its absolute path, id and
// master key, opened with the context's key source.
struct OpenKeys {
  std::string path;
  dp420::crypto::RepoId repo_id{};
  dp420::UnlockedKey key;
};

Result<OpenKeys> Open(dp420_ctx_t* ctx, const char* repo_path) {
  if (Missing(repo_path)) return Status::InvalidArgument("repository path is empty");
  const std::string path = dp420::control::AbsolutePath(repo_path);
  DP420_ASSIGN_OR_RETURN(dp420::crypto::RepoId id, dp420::PeekRepoId(path));
  DP420_ASSIGN_OR_RETURN(dp420::UnlockedKey key, dp420::Unlock(path, id, ctx->key_source));
  return OpenKeys{path, id, std::move(key)};
}

std::string Str(const char* s) { return Missing(s) ? std::string() : std::string(s); }

// The new secret of dp420_key_add / dp420_key_passwd: exactly one given.
Result<dp420::KeySource> NewSource(const char* passphrase_file, const char* key_file,
                                   int prompt) {
  dp420::KeySource s;
  s.passphrase_file = Str(passphrase_file);
  s.key_file = Str(key_file);
  s.prompt = prompt != 0;
  const int given = int(!s.passphrase_file.empty()) + int(!s.key_file.empty()) + int(s.prompt);
  if (given != 1) {
    return Status::InvalidArgument("give the new secret as exactly one of a new passphrase "
                                   "file, a new key file, or the prompt");
  }
  return s;
}

void FillSlot(const dp420::KeySlotInfo& in, uint32_t opened, dp420_key_slot_t* out) {
  std::memset(out, 0, sizeof(*out));
  out->slot_id = in.slot_id;
  out->kind = !in.damage.empty() ? DP420_KEY_SLOT_DAMAGED
              : in.kind == dp420::crypto::SlotKind::kPassphrase ? DP420_KEY_SLOT_PASSPHRASE
                                                                 : DP420_KEY_SLOT_KEY_FILE;
  if (out->kind == DP420_KEY_SLOT_PASSPHRASE) {
    out->scrypt_n = in.scrypt.n;
    out->scrypt_r = in.scrypt.r;
    out->scrypt_p = in.scrypt.p;
  }
  CopyId(out->created, sizeof(out->created), in.created);
  CopyId(out->file, sizeof(out->file), in.file);
  CopyId(out->damage, sizeof(out->damage), in.damage);
  out->opened = in.slot_id == opened ? 1 : 0;
}

}  // namespace

int dp420_ctx_set_passphrase_file(dp420_ctx_t* ctx, const char* path) {
  return Guard(ctx, [&] {
    ctx->key_source.passphrase_file = Missing(path) ? std::string()
                                                    : dp420::control::AbsolutePath(path);
    return Ok(ctx);
  });
}

int dp420_ctx_set_repo_key_file(dp420_ctx_t* ctx, const char* path) {
  return Guard(ctx, [&] {
    ctx->key_source.key_file = Missing(path) ? std::string() : dp420::control::AbsolutePath(path);
    return Ok(ctx);
  });
}

int dp420_ctx_set_passphrase_prompt(dp420_ctx_t* ctx, int allow) {
  return Guard(ctx, [&] {
    ctx->key_source.prompt = allow != 0;
    return Ok(ctx);
  });
}

int dp420_key_list(dp420_ctx_t* ctx, const char* repo_path, dp420_key_list_t* result) {
  return Guard(ctx, [&] {
    if (!result || result->struct_size < sizeof(dp420_key_list_t)) {
      return Fail(ctx, Status::InvalidArgument("dp420_key_list: bad arguments"));
    }
    const size_t size = result->struct_size;
    std::memset(result, 0, sizeof(*result));
    result->struct_size = size;
    auto keys = Open(ctx, repo_path);
    if (!keys.ok()) return Fail(ctx, keys.status());
    auto slots = dp420::ListSlots(keys->path, keys->repo_id);
    if (!slots.ok()) return Fail(ctx, slots.status());
    if (!slots->empty()) {
      result->slots = static_cast<dp420_key_slot_t*>(
          std::calloc(slots->size(), sizeof(dp420_key_slot_t)));
      if (!result->slots) return Fail(ctx, Status::NoMemory("out of memory"));
      result->slot_count = slots->size();
      for (size_t i = 0; i < slots->size(); ++i) {
        FillSlot((*slots)[i], keys->key.slot_id, &result->slots[i]);
      }
    }
    return Ok(ctx);
  });
}

void dp420_key_list_free(dp420_key_list_t* result) {
  if (!result) return;
  std::free(result->slots);
  result->slots = nullptr;
  result->slot_count = 0;
}

int dp420_key_add(dp420_ctx_t* ctx, const char* repo_path, const char* new_passphrase_file,
                  const char* new_key_file, int new_prompt, uint32_t* slot_id_out) {
  return Guard(ctx, [&] {
    auto source = NewSource(new_passphrase_file, new_key_file, new_prompt);
    if (!source.ok()) return Fail(ctx, source.status());
    if (!source->key_file.empty()) {
      source->key_file = dp420::control::AbsolutePath(source->key_file);
    }
    auto keys = Open(ctx, repo_path);
    if (!keys.ok()) return Fail(ctx, keys.status());
    auto id = dp420::AddSlot(keys->path, keys->repo_id, keys->key.master, *source);
    if (!id.ok()) return Fail(ctx, id.status());
    if (slot_id_out) *slot_id_out = *id;
    return Ok(ctx);
  });
}

int dp420_key_remove(dp420_ctx_t* ctx, const char* repo_path, uint32_t slot_id) {
  return Guard(ctx, [&] {
    auto keys = Open(ctx, repo_path);
    if (!keys.ok()) return Fail(ctx, keys.status());
    Status s = dp420::RemoveSlot(keys->path, keys->repo_id, slot_id);
    return s.ok() ? Ok(ctx) : Fail(ctx, s);
  });
}

int dp420_key_passwd(dp420_ctx_t* ctx, const char* repo_path, uint32_t slot_id,
                     const char* new_passphrase_file, int new_prompt, uint32_t* slot_id_out) {
  return Guard(ctx, [&] {
    auto source = NewSource(new_passphrase_file, nullptr, new_prompt);
    if (!source.ok()) return Fail(ctx, source.status());
    auto keys = Open(ctx, repo_path);
    if (!keys.ok()) return Fail(ctx, keys.status());
    const uint32_t id = slot_id != 0 ? slot_id : keys->key.slot_id;
    Status s = dp420::ChangePassphrase(keys->path, keys->repo_id, keys->key.master, id, *source);
    if (!s.ok()) return Fail(ctx, s);
    if (slot_id_out) *slot_id_out = id;
    return Ok(ctx);
  });
}

int dp420_key_export_paper(dp420_ctx_t* ctx, const char* repo_path, char** text_out) {
  return Guard(ctx, [&] {
    if (!text_out) return Fail(ctx, Status::InvalidArgument("dp420_key_export_paper: no text_out"));
    *text_out = nullptr;
    auto keys = Open(ctx, repo_path);
    if (!keys.ok()) return Fail(ctx, keys.status());
    std::string form = dp420::PaperForm(keys->key.master, keys->repo_id);
    *text_out = CopyOut(form);
    dp420::crypto::Cleanse(form.data(), form.size());
    if (!*text_out) return Fail(ctx, Status::NoMemory("out of memory"));
    return Ok(ctx);
  });
}

int dp420_key_recover(dp420_ctx_t* ctx, const char* repo_path, const char* paper_text,
                      const char* new_passphrase_file, const char* new_key_file, int new_prompt,
                      uint32_t* slot_id_out) {
  return Guard(ctx, [&] {
    if (Missing(repo_path)) return Fail(ctx, Status::InvalidArgument("repository path is empty"));
    if (Missing(paper_text)) return Fail(ctx, Status::InvalidArgument("the recovery form is empty"));
    auto source = NewSource(new_passphrase_file, new_key_file, new_prompt);
    if (!source.ok()) return Fail(ctx, source.status());
    if (!source->key_file.empty()) {
      source->key_file = dp420::control::AbsolutePath(source->key_file);
    }
    const std::string path = dp420::control::AbsolutePath(repo_path);
    auto id = dp420::PeekRepoId(path);
    if (!id.ok()) return Fail(ctx, id.status());
    auto master = dp420::ParsePaperForm(paper_text, *id);
    if (!master.ok()) return Fail(ctx, master.status());
    Status s = dp420::Repository::CheckMasterKey(path, *id, *master);
    if (!s.ok()) return Fail(ctx, s);
    auto slot = dp420::AddSlot(path, *id, *master, *source);
    if (!slot.ok()) return Fail(ctx, slot.status());
    if (slot_id_out) *slot_id_out = *slot;
    return Ok(ctx);
  });
}
