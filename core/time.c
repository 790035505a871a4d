/*
** time.c -- core.time: UTC timestamps, formatted and parsed by libc and
** libcurl (no date arithmetic or date grammar of our own).
**
** Times are integer seconds since the epoch (UTC). ISO 8601 goes through
** strptime(3) and timegm(3), RFC 2822 and HTTP dates through
** curl_getdate(3); gmtime_r(3) turns a time back into its fields. The
** checks here are of the string's shape (which characters are digits),
** so that strptime's leniency (leading spaces, one-digit fields) does not
** let a malformed date through, and a round trip through gmtime_r that
** refuses a date timegm would quietly normalise (February 30).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "core.h"

#define MAX_DATE_LEN 64
#define MIN_YEAR 0
#define MAX_YEAR 9999

/* [-0, +0, v] the time at idx: an integer, or a finite float floored */
static time_t
check_time(lua_State *L, int idx)
{
  if (lua_type(L, idx) != LUA_TNUMBER)       /* no string coercion */
    luaL_typeerror(L, idx, "number");
  if (lua_isinteger(L, idx))
    return (time_t)lua_tointeger(L, idx);
  lua_Number n = lua_tonumber(L, idx);
  /* 2^53 seconds is far past any year gmtime_r can write */
  luaL_argcheck(L, n == n && n > -9007199254740992.0 && n < 9007199254740992.0,
                idx, "time out of range");
  lua_Number f = l_mathop(floor)(n);
  return (time_t)(lua_Integer)f;
}

/* [-0, +0, v] the UTC fields of the time at idx, years 0 to 9999 */
static void
check_fields(lua_State *L, int idx, struct tm *tm)
{
  time_t t = check_time(L, idx);
  if (gmtime_r(&t, tm) == NULL || tm->tm_year + 1900 < MIN_YEAR
      || tm->tm_year + 1900 > MAX_YEAR)
    luaL_argerror(L, idx, "time out of range (years 0 to 9999)");
}

/* [-0, +1, m] tm as "YYYY-MM-DD", with "THH:MM:SSZ" when with_time (the
** year in four digits: strftime's %Y writes year 0 as "0") */
static int
push_iso(lua_State *L, const struct tm *tm, int with_time)
{
  char buf[64];
  int n = with_time
    ? snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ",
               tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour,
               tm->tm_min, tm->tm_sec)
    : snprintf(buf, sizeof buf, "%04d-%02d-%02d", tm->tm_year + 1900,
               tm->tm_mon + 1, tm->tm_mday);
  if (n < 0 || (size_t)n >= sizeof buf)
    return luaL_error(L, "time format failed");
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* time.now() -> the current time, integer seconds */
static int
time_now(lua_State *L)
{
  time_t t = time(NULL);
  if (t == (time_t)-1)
    return luaL_error(L, "time: the clock cannot be read");
  lua_pushinteger(L, (lua_Integer)t);
  return 1;
}

/* time.iso(t) -> "2024-02-29T13:05:09Z" */
static int
time_iso(lua_State *L)
{
  struct tm tm;
  check_fields(L, 1, &tm);
  return push_iso(L, &tm, 1);
}

/* time.date(t) -> "2024-02-29" */
static int
time_date(lua_State *L)
{
  struct tm tm;
  check_fields(L, 1, &tm);
  return push_iso(L, &tm, 0);
}

/* time.rfc2822(t) -> "Thu, 29 Feb 2024 13:05:09 +0000", in English
** whatever the locale (strftime's %a and %b follow LC_TIME) */
static int
time_rfc2822(lua_State *L)
{
  static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri",
                                   "Sat" };
  static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May",
                                      "Jun", "Jul", "Aug", "Sep", "Oct",
                                      "Nov", "Dec" };
  struct tm tm;
  check_fields(L, 1, &tm);
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000",
                   days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                   tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (n < 0 || (size_t)n >= sizeof buf)
    return luaL_error(L, "time format failed");
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* time.month_start(t) -> the first of t's month, 00:00:00 UTC */
static int
time_month_start(lua_State *L)
{
  struct tm tm;
  check_fields(L, 1, &tm);
  tm.tm_mday = 1;
  tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
  tm.tm_isdst = 0;
  lua_pushinteger(L, (lua_Integer)timegm(&tm));
  return 1;
}

/* time.timegm(year, month, day, hour?, min?, sec?) -> t: the fields as UTC,
** normalised as timegm(3) does (month 13 is January of the next year, day
** 0 the last day of the month before) */
static int
time_timegm(lua_State *L)
{
  static const char *const names[] = { "year", "month", "day", "hour", "min",
                                       "sec" };
  int v[6];
  for (int i = 0; i < 6; i++) {
    lua_Integer x = i < 3 ? luaL_checkinteger(L, i + 1)
                          : luaL_optinteger(L, i + 1, 0);
    if (x < -100000 || x > 100000)
      return luaL_argerror(L, i + 1, lua_pushfstring(L, "%s out of range",
                                                     names[i]));
    v[i] = (int)x;
  }
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  tm.tm_year = v[0] - 1900;
  tm.tm_mon = v[1] - 1;
  tm.tm_mday = v[2];
  tm.tm_hour = v[3];
  tm.tm_min = v[4];
  tm.tm_sec = v[5];
  lua_pushinteger(L, (lua_Integer)timegm(&tm));
  return 1;
}

/* 1 when s[0..n) matches shape, where 'D' is a digit and any other
** character stands for itself */
static int
has_shape(const char *s, const char *shape)
{
  for (; *shape; s++, shape++) {
    if (*shape == 'D' ? !(*s >= '0' && *s <= '9') : *s != *shape)
      return 0;
  }
  return 1;
}

/* Parse an ISO 8601 date or date-time: YYYY-MM-DD, optionally followed by
** T (or t, or a space) HH:MM[:SS[.fraction]] and Z, z, ±HH, ±HHMM or
** ±HH:MM (none: UTC). 0 and *out, *is_date; or -1 and *why. */
static int
parse_iso(const char *s, time_t *out, int *is_date, const char **why)
{
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  *why = "not an ISO 8601 date (YYYY-MM-DD)";
  if (!has_shape(s, "DDDD-DD-DD") || strptime(s, "%Y-%m-%d", &tm) != s + 10)
    return -1;
  const char *p = s + 10;
  long off = 0;
  *is_date = *p == '\0';
  if (!*is_date) {
    *why = "not an ISO 8601 time (THH:MM[:SS] after the date)";
    if (*p != 'T' && *p != 't' && *p != ' ')
      return -1;
    p++;
    if (has_shape(p, "DD:DD:DD")) {
      if (strptime(p, "%H:%M:%S", &tm) != p + 8)
        return -1;
      p += 8;
      if (*p == '.' || *p == ',') {
        if (!(p[1] >= '0' && p[1] <= '9'))
          return -1;
        for (p++; *p >= '0' && *p <= '9'; p++)
          ;                           /* a fraction of a second: dropped */
      }
    } else if (has_shape(p, "DD:DD")) {
      if (strptime(p, "%H:%M", &tm) != p + 5)
        return -1;
      p += 5;
    } else {
      return -1;
    }
    *why = "bad UTC offset (Z, +HH:MM or -HH:MM)";
    if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
      p++;
    } else if (*p == '+' || *p == '-') {
      struct tm z;
      memset(&z, 0, sizeof z);
      const char *end = strptime(p, "%z", &z);
      if (end == NULL || *end != '\0'
          || !(has_shape(p + 1, "DD:DD") || has_shape(p + 1, "DDDD")
               || end == p + 3)
          || z.tm_gmtoff <= -86400 || z.tm_gmtoff >= 86400)
        return -1;
      off = z.tm_gmtoff;
      p = end;
    }
    if (*p != '\0')
      return -1;
  }
  struct tm want = tm;
  tm.tm_isdst = 0;
  time_t t = timegm(&tm);
  struct tm got;
  if (gmtime_r(&t, &got) == NULL)
    return -1;
  /* the time of day first: 23:59:60 moves the date too */
  if (got.tm_hour != want.tm_hour || got.tm_min != want.tm_min
      || got.tm_sec != want.tm_sec) {
    *why = "no such time of day";
    return -1;
  }
  if (got.tm_year != want.tm_year || got.tm_mon != want.tm_mon
      || got.tm_mday != want.tm_mday) {
    *why = "no such date";
    return -1;
  }
  *out = t - (time_t)off;
  return 0;
}

static int
fail(lua_State *L, const char *why)
{
  luaL_pushfail(L);
  lua_pushstring(L, why);
  return 2;
}

static int
date_string_ok(const char *s, size_t len)
{
  return len <= MAX_DATE_LEN && strlen(s) == len;
}

/* time.parse_iso(s) -> t, is_date | nil, err */
static int
time_parse_iso(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (!date_string_ok(s, len))
    return fail(L, "not an ISO 8601 date (too long, or a NUL byte)");
  time_t t;
  int is_date;
  const char *why;
  if (parse_iso(s, &t, &is_date, &why) != 0)
    return fail(L, why);
  lua_pushinteger(L, (lua_Integer)t);
  lua_pushboolean(L, is_date);
  return 2;
}

/* time.parse(s) -> t, is_date | nil, err: ISO 8601 when s starts with
** "YYYY-", else an RFC 2822 / HTTP date (curl_getdate, which also takes
** RFC 850 and asctime forms, and normalises a day past the month's end;
** is_date is then false). curl_getdate answers 0 for the one second
** 1969-12-31T23:59:59Z, its -1 meaning failure. */
static int
time_parse(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (!date_string_ok(s, len))
    return fail(L, "not a date (too long, or a NUL byte)");
  if (has_shape(s, "DDDD-"))
    return time_parse_iso(L);
  time_t t = curl_getdate(s, NULL);
  if (t == (time_t)-1)
    return fail(L, "not an ISO 8601, RFC 2822 or HTTP date");
  lua_pushinteger(L, (lua_Integer)t);
  lua_pushboolean(L, 0);
  return 2;
}

static const luaL_Reg time_funcs[] = {
  { "now", time_now },
  { "iso", time_iso },
  { "date", time_date },
  { "rfc2822", time_rfc2822 },
  { "month_start", time_month_start },
  { "timegm", time_timegm },
  { "parse_iso", time_parse_iso },
  { "parse", time_parse },
  { NULL, NULL }
};

int
luaopen_core_time(lua_State *L)
{
  luaL_newlib(L, time_funcs);
  return 1;
}
