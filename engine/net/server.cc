// Placeholder until the implementation lands.
#include "engine/net/server.h"
