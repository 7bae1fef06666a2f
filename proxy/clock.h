/*
 * clock: the monotonic time the event loops measure with.
 *
 * Owns nothing. Any thread.
 */
#ifndef CLONEGATE_CLOCK_H
#define CLONEGATE_CLOCK_H

#include <stdint.h>

/* Monotonic microseconds (CLOCK_MONOTONIC through the vDSO: no system call). */
int64_t clock_mono_us(void);

#endif /* CLONEGATE_CLOCK_H */
