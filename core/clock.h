/* The router's two clocks, in seconds as doubles: monotonic for timeouts
 * and intervals, epoch (wall time) for what leaves the process (packet
 * timestamps, the database, logs). */
#ifndef MR_CLOCK_H
#define MR_CLOCK_H

double clock_monotonic(void);
double clock_epoch(void);

#endif
