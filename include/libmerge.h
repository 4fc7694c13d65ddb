/* libmerge: merge fine-tuned neural-network models without retraining.
 *
 * Umbrella header: the stable API. Plugin authors also include
 * <libmerge/sys/strategy.h>. The experimental tier (NSC, purification
 * tuning: <libmerge/experimental/nsc.h>, <libmerge/experimental/
 * purify_tune.h>) is included explicitly, outside the ABI promise.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_H
#define LIBMERGE_H

#include "libmerge/common.h"
#include "libmerge/context.h"
#include "libmerge/tensor.h"
#include "libmerge/model.h"
#include "libmerge/sink.h"
#include "libmerge/plan.h"
#include "libmerge/file_sink.h"
#include "libmerge/stats.h"
#include "libmerge/lora.h"
#include "libmerge/merger.h"
#include "libmerge/safetensors.h"
#include "libmerge/peft.h"
#include "libmerge/projector.h"
#include "libmerge/purify.h"
#include "libmerge/gguf.h"
#include "libmerge/npz.h"
#include "libmerge/output.h"
#include "libmerge/io.h"

#endif /* LIBMERGE_H */
