// Placeholder until the implementation lands.
#include "engine/net/client.h"
