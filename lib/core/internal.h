/* Internal definitions shared by the library's modules, one private
 * header per object (context, tensor, model, LoRA, plan); modules outside
 * lib/core include this one. Not installed.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LM_CORE_INTERNAL_H
#define LM_CORE_INTERNAL_H

#include "core/context_private.h"
#include "core/lora_private.h"
#include "core/model_private.h"
#include "core/plan_private.h"
#include "core/tensor_private.h"

#endif /* LM_CORE_INTERNAL_H */
