// fp4q/io/io.h — umbrella header of the io module (safetensors reading/writing, atomic output,
// inspect). See the individual headers for the on-disk formats and invariants.
#pragma once

#include "fp4q/io/dtype.h"
#include "fp4q/io/inspect.h"
#include "fp4q/io/safetensors.h"
#include "fp4q/io/writer.h"
