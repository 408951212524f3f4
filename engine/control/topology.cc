#include "engine/control/topology.h"

#include <unistd.h>

#include <climits>
#include <vector>

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
  char host[HOST_NAME_MAX + 1] = {};
  gethostname(host, sizeof(host) - 1);
  Json member = {{"node_id", node_id}, {"host", host}, {"volume", volume}, {"device", source_path}};
  return Json{{"node_id", node_id},
              {"host", host},
              {"device", source_path},
              {"members", Json::array({member})}};
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
