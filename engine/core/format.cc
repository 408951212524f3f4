#include "engine/core/format.h"

#include <cstdio>

namespace dp420 {

std::string PackName(uint32_t pack_id) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", pack_id);
  return buf;
}

uint64_t TableShape::PagesAt(uint32_t level) const {
  uint64_t span = kPageEntries;
  for (uint32_t i = 0; i < level; ++i) span *= kPageEntries;
  uint64_t pages = DivCeil(blocks, span);
  return pages == 0 ? 1 : pages;
}

TableShape TableShape::For(uint64_t blocks) {
  TableShape shape;
  shape.blocks = blocks;
  shape.levels = 1;
  while (shape.PagesAt(shape.levels - 1) > 1) ++shape.levels;
  return shape;
}

}  // namespace dp420
