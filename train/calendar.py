"""Calendar arithmetic shared by the shop, the model's time encoding and the business rules.

Everything is integer arithmetic on Unix seconds (UTC) so the C engine can reproduce it bit for bit:
the civil-date conversion is Howard Hinnant's days_from_civil inverse, valid for any day >= 1970-01-01.
"""
import math

SECONDS_PER_DAY = 86400
SEASONS = ("winter", "spring", "summer", "autumn")


def civil_from_days(z):
    """Days since 1970-01-01 -> (year, month 1..12, day 1..31)."""
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def day_of_year(ts):
    """0-based day of the year of Unix time ts (UTC)."""
    days = ts // SECONDS_PER_DAY
    y, _, _ = civil_from_days(days)
    # days since epoch of January 1st of year y
    jan1 = days_from_civil(y, 1, 1)
    return days - jan1


def days_from_civil(y, m, d):
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def month_of(ts):
    return civil_from_days(ts // SECONDS_PER_DAY)[1]


def calendar_features(ts):
    """Six features of an event time: sin/cos of hour of day, weekday and day of year.

    Computed in float64 (the C engine uses double too) and rounded to float32 by the caller.
    """
    days = ts // SECONDS_PER_DAY
    hour = (ts % SECONDS_PER_DAY) / 3600.0
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    doy = day_of_year(ts)
    two_pi = 2.0 * math.pi
    a, b, c = two_pi * hour / 24.0, two_pi * weekday / 7.0, two_pi * doy / 366.0
    return (math.sin(a), math.cos(a), math.sin(b), math.cos(b), math.sin(c), math.cos(c))


def season_of(ts, season_offset, fixed_season):
    """Season index (0 winter .. 3 autumn) at time ts in a region.

    Northern meteorological seasons (Dec-Feb winter); season_offset=2 flips the hemisphere;
    a fixed_season >= 0 (tropical regions) ignores the calendar.
    """
    if fixed_season is not None and fixed_season >= 0:
        return fixed_season
    m = month_of(ts)
    return ((m % 12) // 3 + season_offset) % 4
