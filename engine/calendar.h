/* Calendar arithmetic on Unix seconds (UTC), bit-identical to train/calendar.py. */
#ifndef VITRINE_ENGINE_CALENDAR_H
#define VITRINE_ENGINE_CALENDAR_H

#include <stdint.h>

/* Days since 1970-01-01 -> civil date (Howard Hinnant's algorithm). */
void vt_civil_from_days(int64_t z, int64_t *y, int *m, int *d);
int64_t vt_days_from_civil(int64_t y, int m, int d);

/* The six calendar features of ts: sin/cos of 2 pi hour/24, weekday/7, day-of-year/366 (double). */
void vt_calendar_features(int64_t ts, double out[6]);

/* Season (0 winter .. 3 autumn) at ts in a region: northern meteorological seasons shifted by
 * season_offset; fixed_season >= 0 overrides the calendar. */
int vt_season_of(int64_t ts, int season_offset, int fixed_season);

#endif
