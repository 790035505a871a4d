// phonenumber.cc -- the C API of phonenumber.h over libphonenumber's
// PhoneNumberUtil (Debian's libphonenumber-dev). Every entry point catches
// every exception: nothing C++ crosses into the C (and Lua) side.
#include "phonenumber.h"

#include <cstring>
#include <string>

#include <phonenumbers/phonenumber.pb.h>
#include <phonenumbers/phonenumberutil.h>

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

namespace {

// Copies s into out (of size n) when it fits; false otherwise.
bool copy_out(const std::string &s, char *out, size_t n)
{
  if (s.size() >= n)
    return false;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return true;
}

const char *why_impossible(PhoneNumberUtil::ValidationResult r)
{
  switch (r) {
  case PhoneNumberUtil::INVALID_COUNTRY_CODE: return "unknown country calling code";
  case PhoneNumberUtil::TOO_SHORT: return "too short";
  case PhoneNumberUtil::TOO_LONG: return "too long";
  case PhoneNumberUtil::IS_POSSIBLE_LOCAL_ONLY: return "a local number, without its area code";
  default: return "not a possible length";
  }
}

enum pn_type type_of(PhoneNumberUtil::PhoneNumberType t)
{
  switch (t) {
  case PhoneNumberUtil::FIXED_LINE: return PN_FIXED_LINE;
  case PhoneNumberUtil::MOBILE: return PN_MOBILE;
  case PhoneNumberUtil::FIXED_LINE_OR_MOBILE: return PN_FIXED_LINE_OR_MOBILE;
  case PhoneNumberUtil::TOLL_FREE: return PN_TOLL_FREE;
  case PhoneNumberUtil::PREMIUM_RATE: return PN_PREMIUM_RATE;
  case PhoneNumberUtil::SHARED_COST: return PN_SHARED_COST;
  case PhoneNumberUtil::VOIP: return PN_VOIP;
  case PhoneNumberUtil::PERSONAL_NUMBER: return PN_PERSONAL_NUMBER;
  case PhoneNumberUtil::PAGER: return PN_PAGER;
  case PhoneNumberUtil::UAN: return PN_UAN;
  case PhoneNumberUtil::VOICEMAIL: return PN_VOICEMAIL;
  default: return PN_UNKNOWN;
  }
}

int parse(const char *number, struct pn_info *out)
{
  const PhoneNumberUtil &util = *PhoneNumberUtil::GetInstance();
  PhoneNumber pn;
  // "ZZ": no default region, so only numbers with '+' and a country code.
  switch (util.Parse(number, "ZZ", &pn)) {
  case PhoneNumberUtil::NO_PARSING_ERROR: break;
  case PhoneNumberUtil::INVALID_COUNTRY_CODE_ERROR: return PN_NO_COUNTRY;
  case PhoneNumberUtil::TOO_SHORT_AFTER_IDD:
  case PhoneNumberUtil::TOO_SHORT_NSN: return PN_TOO_SHORT;
  case PhoneNumberUtil::TOO_LONG_NSN: return PN_TOO_LONG;
  default: return PN_NOT_NUMBER;
  }
  std::string s;
  util.Format(pn, PhoneNumberUtil::E164, &s);
  if (!copy_out(s, out->e164, sizeof out->e164))
    return PN_TOO_LONG;
  if (!copy_out(pn.has_extension() ? pn.extension() : std::string(), out->extension,
                sizeof out->extension))
    return PN_TOO_LONG;
  out->country_code = pn.country_code();
  PhoneNumberUtil::ValidationResult possible = util.IsPossibleNumberWithReason(pn);
  out->possible = possible == PhoneNumberUtil::IS_POSSIBLE;
  // IsValidNumber is GetRegionCodeForNumber then IsValidNumberForRegion;
  // the region (a walk over every region of the country code, 25 for +1)
  // is looked up once here for both
  util.GetRegionCodeForNumber(pn, &s);
  out->valid = util.IsValidNumberForRegion(pn, s);
  out->type = PN_UNKNOWN;
  out->why = nullptr;
  if (out->valid) {
    if (s == "ZZ" || !copy_out(s, out->region, sizeof out->region))
      out->region[0] = '\0';
    out->type = type_of(util.GetNumberType(pn));
  } else {
    out->why = out->possible ? "not a valid number" : why_impossible(possible);
  }
  return PN_OK;
}

} // namespace

extern "C" int pn_init(void)
{
  try {
    return PhoneNumberUtil::GetInstance() != nullptr ? 0 : -1;
  } catch (...) {
    return -1;
  }
}

extern "C" int pn_parse(const char *number, struct pn_info *out)
{
  std::memset(out, 0, sizeof *out);
  int rc;
  try {
    rc = parse(number, out);
  } catch (...) {
    rc = PN_FAILED;
  }
  if (rc != PN_OK)
    std::memset(out, 0, sizeof *out);
  return rc;
}

extern "C" const char *pn_type_name(int type)
{
  static const char *const names[] = {
    "fixed_line", "mobile", "fixed_line_or_mobile", "toll_free", "premium_rate", "shared_cost",
    "voip", "personal_number", "pager", "uan", "voicemail", "unknown",
  };
  if (type < 0 || type > PN_UNKNOWN)
    return "unknown";
  return names[type];
}

extern "C" const char *pn_strerror(int rc)
{
  switch (rc) {
  case PN_OK: return "ok";
  case PN_NOT_NUMBER: return "not a phone number";
  case PN_NO_COUNTRY: return "no known country calling code after a '+'";
  case PN_TOO_SHORT: return "too short";
  case PN_TOO_LONG: return "too long";
  default: return "the phone number library failed";
  }
}
