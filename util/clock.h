/* clock.h: the one wall clock of effdm (monotonic seconds, for durations and ETAs). */
#ifndef EFFDM_CLOCK_H
#define EFFDM_CLOCK_H

// Seconds on CLOCK_MONOTONIC: differences are durations, unaffected by clock changes.
double clock_seconds(void);

#endif
