// Ember's dtypes as cuDNN's, for the two cuDNN convolution paths (linear.cpp's legacy calls and
// conv_graph.cpp's graph API); defined in linear.cpp.
#pragma once

#include <cudnn.h>

#include "ember/engine/types.h"

namespace ember::engine::cuda {

/// The cuDNN type of a float dtype; any other throws naming `layer` ("<layer> (cuda): dtype ...
/// is not supported (float types only)").
cudnnDataType_t dnn_type(DataType t, const char* layer);

}  // namespace ember::engine::cuda
