/* What the library reads of a projector beyond its public accessors.
 * Not installed. */
#ifndef LM_LINALG_PROJECTOR_PRIVATE_H
#define LM_LINALG_PROJECTOR_PRIVATE_H

#include "libmerge/projector.h"

/* Strength of direction j (< rank): the variance it carries, so that
 * methods weighting directions by eigenvalues of a second moment (ESM) or
 * by singular values (purification's polarize, sqrt of it) read the same
 * number whichever way the projector was built: the squared singular
 * value for LM_BASIS_LEFT / LM_BASIS_RIGHT, the eigenvalue (negative ones
 * as zero) for LM_BASIS_EIGEN and lm_projector_from_stats. */
double lm__projector_strength(const lm_projector *p, size_t j);

#endif
