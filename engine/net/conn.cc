// Placeholder until the implementation lands.
#include "engine/net/conn.h"
