/*
** phonenumber.h -- a C API over libphonenumber (C++), for core/phone.c.
** Nothing here throws or calls into Lua: every C++ exception is caught
** inside phonenumber.cc and reported as a return code.
*/
#ifndef SB_PHONENUMBER_H
#define SB_PHONENUMBER_H

#ifdef __cplusplus
extern "C" {
#endif

/* libphonenumber's PhoneNumberUtil::PhoneNumberType, in its order. */
enum pn_type {
  PN_FIXED_LINE, PN_MOBILE, PN_FIXED_LINE_OR_MOBILE, PN_TOLL_FREE,
  PN_PREMIUM_RATE, PN_SHARED_COST, PN_VOIP, PN_PERSONAL_NUMBER, PN_PAGER,
  PN_UAN, PN_VOICEMAIL, PN_UNKNOWN
};

struct pn_info {
  int valid;          /* a valid number per the metadata of its region */
  int possible;       /* its length is possible for its country code */
  int country_code;   /* the country calling code, e.g. 1, 44 */
  char region[4];     /* CLDR region, e.g. "US"; "001" for non-geographic
                         numbers; "" when no region fits (invalid) */
  enum pn_type type;  /* PN_UNKNOWN for an invalid number */
  char e164[24];      /* the number formatted in E.164 */
  char extension[24]; /* an extension written after it ("ext. 12"), or "" */
  const char *why;    /* NULL when valid, else a static reason: "unknown
                         country calling code", "too short", "too long",
                         "not a possible length", "not a valid number" */
};

/* Result codes of pn_parse. */
#define PN_OK 0             /* parsed: see out->valid and out->why */
#define PN_NOT_NUMBER 1     /* not a phone number at all */
#define PN_NO_COUNTRY 2     /* no '+' and a known country calling code */
#define PN_TOO_SHORT 3      /* too few digits for any phone number */
#define PN_TOO_LONG 4       /* more digits than any phone number has */
#define PN_FAILED 5         /* libphonenumber failed (out of memory, ...) */

/* Load the metadata now (it loads on first use otherwise). 0 or -1. */
int pn_init(void);

/* Parse a number written in international form (a leading '+'; spaces,
** dashes, dots and brackets are allowed, as libphonenumber allows them).
** Fills *out when PN_OK; *out is zeroed otherwise. */
int pn_parse(const char *number, struct pn_info *out);

/* "mobile", "fixed_line", ... for a pn_type; "unknown" for others. */
const char *pn_type_name(int type);

/* A short reason for a non-PN_OK result code. */
const char *pn_strerror(int rc);

#ifdef __cplusplus
}
#endif

#endif
