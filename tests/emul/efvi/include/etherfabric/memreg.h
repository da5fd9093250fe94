/* TEST EMULATION -- NOT Onload's header: see ef_vi.h beside it. */
#include "ef_vi.h"
