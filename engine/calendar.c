#include "calendar.h"

#include <math.h>

#define SECONDS_PER_DAY 86400

/* floor division for the era computations, as Python's // */
static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

void vt_civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = floor_div(z >= 0 ? z : z - 146096, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t yy = yoe + era * 400;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = *m <= 2 ? yy + 1 : yy;
}

int64_t vt_days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = floor_div(y >= 0 ? y : y - 399, 400);
  int64_t yoe = y - era * 400;
  int64_t mp = m > 2 ? m - 3 : m + 9;
  int64_t doy = (153 * mp + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

void vt_calendar_features(int64_t ts, double out[6]) {
  int64_t days = floor_div(ts, SECONDS_PER_DAY);
  double hour = (double)(ts - days * SECONDS_PER_DAY) / 3600.0;
  int64_t weekday = ((days + 3) % 7 + 7) % 7; /* 1970-01-01 was a Thursday; 0 = Monday */
  int64_t y;
  int m, d;
  vt_civil_from_days(days, &y, &m, &d);
  int64_t doy = days - vt_days_from_civil(y, 1, 1);
  const double two_pi = 2.0 * M_PI;
  double a = two_pi * hour / 24.0, b = two_pi * (double)weekday / 7.0,
         c = two_pi * (double)doy / 366.0;
  out[0] = sin(a);
  out[1] = cos(a);
  out[2] = sin(b);
  out[3] = cos(b);
  out[4] = sin(c);
  out[5] = cos(c);
}

int vt_season_of(int64_t ts, int season_offset, int fixed_season) {
  if (fixed_season >= 0)
    return fixed_season;
  int64_t y;
  int m, d;
  vt_civil_from_days(floor_div(ts, SECONDS_PER_DAY), &y, &m, &d);
  return ((m % 12) / 3 + season_offset) % 4;
}
