#include "engine/control/topology.h"

#include <unistd.h>

#include <climits>
#include <vector>

#include "engine/core/text.h"
#include "io/file.h"

namespace dp420::control {

Json LocalTopology(const std::string& volume, const std::string& source_path) {
  std::string node_id;
  auto id = io::ReadFile("/etc/machine-id");
  if (id.ok()) {
    node_id = id.value();
    while (!node_id.empty() && (node_id.back() == '\n' || node_id.back() == ' ')) {
      node_id.pop_back();
    }
  }
  char name[HOST_NAME_MAX + 1] = {};
  gethostname(name, sizeof(name) - 1);
  // Any of these may hold bytes that are not UTF-8 (a device path surely
  // can), and a manifest is JSON: escaped as `source.path` is.
  node_id = EscapeBytes(node_id);
  std::string host = EscapeBytes(name);
  std::string device = EscapeBytes(source_path);
  Json member = {{"node_id", node_id}, {"host", host}, {"volume", EscapeBytes(volume)}, {"device", device}};
  return Json{{"node_id", node_id},
              {"host", host},
              {"device", device},
              {"members", Json::array({member})}};
}

void SetPointInTime(Json* topology, const Json& record) {
  Json& members = (*topology)["members"];
  if (members.is_array() && !members.empty()) members[0]["point_in_time"] = record;
}

std::string AbsolutePath(const std::string& path) {
  std::string full = path;
  if (full.empty() || full[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == nullptr) return path;
    full = std::string(cwd) + "/" + path;
  }
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= full.size()) {
    size_t next = full.find('/', pos);
    if (next == std::string::npos) next = full.size();
    std::string part = full.substr(pos, next - pos);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    pos = next + 1;
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

}  // namespace dp420::control
