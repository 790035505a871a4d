/*
** vault.c -- core.vault: the master key, per-tenant data keys and the
** credential blobs they seal (OpenSSL 3, EVP APIs only).
**
** Envelope encryption: a master key wraps one random 32-byte data key per
** tenant; each data key seals that tenant's fields. The master key has
** versions (rotate adds one, retire removes an old one; see "Master").
** Both layers use the same v1 blob format, encrypt-then-MAC:
**
**   0x01 (version) | 0x01 (alg) | IV(16) | AES-256-CBC ciphertext | tag(32)
**   enc_key = HKDF-SHA256(key, salt none, info "switchboard v1 enc")
**   mac_key = HKDF-SHA256(key, salt none, info "switchboard v1 mac")
**   tag = HMAC-SHA256(mac_key, version | alg | IV | ciphertext |
**                     u64be(len tenant) | tenant | u64be(len field) | field)
**
** A wrapped data key is such a blob under a master key version, with the
** field "data-key", after a 4-byte prefix naming the version. The tag is compared with CRYPTO_memcmp before any
** decryption or unpadding, and every failure gives the same
** nil, "decryption failed".
**
** Secrets (the master key, opened credentials) live in mlock'd,
** MADV_DONTDUMP pages of their own, wiped with OPENSSL_cleanse before
** they are unmapped or kept, locked, in a small pool for the next secret. A credential's secret never goes back to Lua: only C
** (sb_credential, for core.http) reads it.
*/
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "core.h"

#define MASTER_MT "core.vault.Master"
#define CRED_MT "core.vault.Credential"

#define KEY_LEN 32
#define HDR_LEN 2
#define IV_LEN 16
#define BLOCK_LEN 16
#define TAG_LEN 32
#define V1_VERSION 0x01
#define V1_ALG 0x01
/* the smallest blob: header, IV, one block of ciphertext, tag */
#define MIN_BLOB (HDR_LEN + IV_LEN + BLOCK_LEN + TAG_LEN)
/* plaintexts above this are refused (EVP lengths are ints) */
#define MAX_PLAIN ((size_t)1 << 30)

#define DECRYPT_FAILED "decryption failed"

/*
** {======================================================
** Locked memory for secrets
** =======================================================
*/

static size_t
page_size(void)
{
  long pg = sysconf(_SC_PAGESIZE);
  return pg > 0 ? (size_t)pg : 4096;
}

/* Single pages given back are kept here, still locked, wiped, for the
** next secret: a credential or a Basic header then costs no system call.
** Drained at exit (the module state's __gc); after that, pages go back
** to the system at once. */
#define SEC_POOL_MAX 32

static struct {
  unsigned char *page[SEC_POOL_MAX];
  int n;
  int closed;
} Pool;

/* Map len bytes (rounded up to whole pages) of private memory, locked
** into RAM when the rlimit allows and left out of core dumps. Returns
** NULL on failure; *maplen receives the mapped size for sb_secure_free. */
unsigned char *
sb_secure_alloc(size_t len, size_t *maplen)
{
  size_t page = page_size();
  if (len > SIZE_MAX - page)
    return NULL;
  size_t n = (len + page - 1) / page * page;
  if (n == 0)
    n = page;
  if (n == page && Pool.n > 0) {
    *maplen = page;
    return Pool.page[--Pool.n];
  }
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  (void)mlock(p, n);                    /* best effort (RLIMIT_MEMLOCK) */
  (void)madvise(p, n, MADV_DONTDUMP);
  *maplen = n;
  return p;
}

/* Wipe and give back what sb_secure_alloc returned. */
void
sb_secure_free(unsigned char *p, size_t maplen)
{
  if (p == NULL)
    return;
  OPENSSL_cleanse(p, maplen);
  if (maplen == page_size() && !Pool.closed && Pool.n < SEC_POOL_MAX) {
    Pool.page[Pool.n++] = p;
    return;
  }
  (void)munlock(p, maplen);
  (void)munmap(p, maplen);
}

static void
pool_drain(void)
{
  size_t page = page_size();
  Pool.closed = 1;
  while (Pool.n > 0) {
    unsigned char *p = Pool.page[--Pool.n];
    (void)munlock(p, page);
    (void)munmap(p, page);
  }
}

#define sec_alloc sb_secure_alloc
#define sec_free sb_secure_free

/* }====================================================== */


/*
** {======================================================
** The v1 blob format (no Lua here)
** =======================================================
*/

static char hkdf_digest[] = "SHA256";
static unsigned char info_enc[] = "switchboard v1 enc";
static unsigned char info_mac[] = "switchboard v1 mac";
static unsigned char field_data_key[] = "data-key";
static unsigned char info_audit[] = "switchboard v1 audit";

/* Fetched once when the module is opened, freed by the module state's
** __gc: an implicit fetch (EVP_aes_256_cbc(), EVP_Q_mac, a digest named in
** a parameter) costs a lock and a name lookup per operation. The HMAC
** template has its digest set; each MAC dups it. */
static struct {
  int users;
  EVP_CIPHER *aes;
  EVP_MD *sha256;
  EVP_MAC *hmac;
  EVP_KDF *hkdf;
  EVP_MAC_CTX *hmac_tmpl;
} Alg;

static void
algs_free(void)
{
  EVP_MAC_CTX_free(Alg.hmac_tmpl);
  EVP_KDF_free(Alg.hkdf);
  EVP_MAC_free(Alg.hmac);
  EVP_MD_free(Alg.sha256);
  EVP_CIPHER_free(Alg.aes);
  memset(&Alg, 0, sizeof Alg);
}

static int
algs_fetch(void)
{
  OSSL_PARAM params[2];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                               hkdf_digest, 0);
  params[1] = OSSL_PARAM_construct_end();
  Alg.aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
  Alg.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
  Alg.hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
  Alg.hkdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_HKDF, NULL);
  if (Alg.aes == NULL || Alg.sha256 == NULL || Alg.hmac == NULL
      || Alg.hkdf == NULL)
    goto fail;
  Alg.hmac_tmpl = EVP_MAC_CTX_new(Alg.hmac);
  if (Alg.hmac_tmpl == NULL || EVP_MAC_CTX_set_params(Alg.hmac_tmpl, params) != 1)
    goto fail;
  return 0;
fail:
  algs_free();
  return -1;
}

/* HMAC-SHA256(key, data) into md (32 bytes). 0 or -1. */
static int
hmac_sha256(const unsigned char *key, size_t klen, const unsigned char *data,
            size_t len, unsigned char md[32])
{
  EVP_MAC_CTX *mctx = Alg.hmac_tmpl != NULL ? EVP_MAC_CTX_dup(Alg.hmac_tmpl)
                                            : NULL;
  size_t outlen = 0;
  int ok = mctx != NULL && EVP_MAC_init(mctx, key, klen, NULL) == 1
           && EVP_MAC_update(mctx, data, len) == 1
           && EVP_MAC_final(mctx, md, &outlen, 32) == 1 && outlen == 32;
  EVP_MAC_CTX_free(mctx);
  return ok ? 0 : -1;
}

static int
hkdf_one(unsigned char *key, unsigned char *info, size_t infolen,
         unsigned char out[KEY_LEN])
{
  /* OpenSSL 3.0's HKDF cannot dup a context: each derive names the
  ** digest (credentials are opened rarely, see the cache in Lua) */
  EVP_KDF_CTX *kctx = Alg.hkdf != NULL ? EVP_KDF_CTX_new(Alg.hkdf) : NULL;
  if (kctx == NULL)
    return -1;
  OSSL_PARAM params[4];
  params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                               hkdf_digest, 0);
  params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, key,
                                                KEY_LEN);
  params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info,
                                                infolen);
  params[3] = OSSL_PARAM_construct_end();
  int ok = EVP_KDF_derive(kctx, out, KEY_LEN, params) == 1;
  EVP_KDF_CTX_free(kctx);
  return ok ? 0 : -1;
}

/* enc and mac keys for one key; both wiped by the caller. */
static int
derive_keys(unsigned char *key, unsigned char enc[KEY_LEN],
            unsigned char mac[KEY_LEN])
{
  if (hkdf_one(key, info_enc, sizeof info_enc - 1, enc) != 0
      || hkdf_one(key, info_mac, sizeof info_mac - 1, mac) != 0) {
    OPENSSL_cleanse(enc, KEY_LEN);
    OPENSSL_cleanse(mac, KEY_LEN);
    return -1;
  }
  return 0;
}

static void
put_u64be(unsigned char out[8], uint64_t v)
{
  for (int i = 7; i >= 0; i--) {
    out[i] = (unsigned char)(v & 0xff);
    v >>= 8;
  }
}

/* tag = HMAC(mac_key, body | len(tenant) | tenant | len(field) | field),
** body being header, IV and ciphertext. */
static int
compute_tag(unsigned char mac_key[KEY_LEN], const unsigned char *body,
            size_t bodylen, const char *tenant, size_t tlen,
            const char *field, size_t flen, unsigned char tag[TAG_LEN])
{
  EVP_MAC_CTX *mctx = Alg.hmac_tmpl != NULL ? EVP_MAC_CTX_dup(Alg.hmac_tmpl)
                                            : NULL;
  if (mctx == NULL)
    return -1;
  unsigned char tl[8], fl[8];
  put_u64be(tl, (uint64_t)tlen);
  put_u64be(fl, (uint64_t)flen);
  size_t outlen = 0;
  int ok = EVP_MAC_init(mctx, mac_key, KEY_LEN, NULL) == 1
           && EVP_MAC_update(mctx, body, bodylen) == 1
           && EVP_MAC_update(mctx, tl, sizeof tl) == 1
           && EVP_MAC_update(mctx, (const unsigned char *)tenant, tlen) == 1
           && EVP_MAC_update(mctx, fl, sizeof fl) == 1
           && EVP_MAC_update(mctx, (const unsigned char *)field, flen) == 1
           && EVP_MAC_final(mctx, tag, &outlen, TAG_LEN) == 1
           && outlen == TAG_LEN;
  EVP_MAC_CTX_free(mctx);
  return ok ? 0 : -1;
}

static size_t
sealed_len(size_t ptlen)
{
  return HDR_LEN + IV_LEN + (ptlen / BLOCK_LEN + 1) * BLOCK_LEN + TAG_LEN;
}

/* Seal pt under key into out (outcap >= sealed_len(ptlen) bytes). 0 or -1.
** EVP_EncryptUpdate may write up to inl + block size - 1 bytes and
** EVP_EncryptFinal_ex one more block: the ciphertext's room (up to the
** end of out, tag included) is checked against that before either runs. */
static int
seal_raw(unsigned char key[KEY_LEN], const char *tenant, size_t tlen,
         const char *field, size_t flen, const unsigned char *pt,
         size_t ptlen, unsigned char *out, size_t outcap)
{
  unsigned char enc[KEY_LEN], mac[KEY_LEN];
  if (ptlen > MAX_PLAIN || outcap < sealed_len(ptlen)
      || outcap - HDR_LEN - IV_LEN < ptlen + 2 * BLOCK_LEN
      || derive_keys(key, enc, mac) != 0)
    return -1;
  int rc = -1;
  unsigned char *iv = out + HDR_LEN;
  unsigned char *ct = iv + IV_LEN;
  int n1 = 0, n2 = 0;
  out[0] = V1_VERSION;
  out[1] = V1_ALG;
  EVP_CIPHER_CTX *cctx = EVP_CIPHER_CTX_new();
  if (cctx == NULL || Alg.aes == NULL || RAND_bytes(iv, IV_LEN) != 1)
    goto done;
  if (EVP_EncryptInit_ex2(cctx, Alg.aes, enc, iv, NULL) != 1
      || EVP_EncryptUpdate(cctx, ct, &n1, pt, (int)ptlen) != 1
      || EVP_EncryptFinal_ex(cctx, ct + n1, &n2) != 1)
    goto done;
  size_t ctlen = (size_t)n1 + (size_t)n2;
  if (ctlen != sealed_len(ptlen) - HDR_LEN - IV_LEN - TAG_LEN)
    goto done;
  if (compute_tag(mac, out, HDR_LEN + IV_LEN + ctlen, tenant, tlen, field,
                  flen, ct + ctlen) != 0)
    goto done;
  rc = 0;
done:
  EVP_CIPHER_CTX_free(cctx);
  OPENSSL_cleanse(enc, sizeof enc);
  OPENSSL_cleanse(mac, sizeof mac);
  return rc;
}

/* The room EVP_DecryptUpdate + EVP_DecryptFinal_ex need for ctlen bytes
** of ciphertext: OpenSSL documents inl + block size for the update. */
#define OPEN_ROOM(ctlen) ((ctlen) + BLOCK_LEN)
/* the ciphertext of a wrapped data key (32 bytes and a block of padding) */
#define WRAPPED_CT_LEN ((KEY_LEN / BLOCK_LEN + 1) * BLOCK_LEN)

/* Verify and open blob under key into out (outcap bytes, at least
** OPEN_ROOM of the ciphertext's length, checked). 0 and *outlen, or -1
** for any failure, whatever it is. */
static int
open_raw(unsigned char key[KEY_LEN], const char *tenant, size_t tlen,
         const char *field, size_t flen, const unsigned char *blob,
         size_t bloblen, unsigned char *out, size_t outcap, size_t *outlen)
{
  if (bloblen < MIN_BLOB || bloblen - MIN_BLOB > MAX_PLAIN
      || (bloblen - HDR_LEN - IV_LEN - TAG_LEN) % BLOCK_LEN != 0
      || blob[0] != V1_VERSION || blob[1] != V1_ALG
      || outcap < OPEN_ROOM(bloblen - HDR_LEN - IV_LEN - TAG_LEN))
    return -1;
  unsigned char enc[KEY_LEN], mac[KEY_LEN], tag[TAG_LEN];
  if (derive_keys(key, enc, mac) != 0)
    return -1;
  int rc = -1;
  size_t bodylen = bloblen - TAG_LEN;
  size_t ctlen = bodylen - HDR_LEN - IV_LEN;
  const unsigned char *iv = blob + HDR_LEN;
  const unsigned char *ct = iv + IV_LEN;
  int n1 = 0, n2 = 0;
  EVP_CIPHER_CTX *cctx = NULL;
  /* the MAC first, in constant time: nothing is decrypted or unpadded
  ** unless the blob is exactly what was sealed for this tenant and field */
  if (compute_tag(mac, blob, bodylen, tenant, tlen, field, flen, tag) != 0
      || CRYPTO_memcmp(tag, blob + bodylen, TAG_LEN) != 0)
    goto done;
  cctx = EVP_CIPHER_CTX_new();
  if (cctx == NULL || Alg.aes == NULL
      || EVP_DecryptInit_ex2(cctx, Alg.aes, enc, iv, NULL) != 1
      || EVP_DecryptUpdate(cctx, out, &n1, ct, (int)ctlen) != 1
      || EVP_DecryptFinal_ex(cctx, out + n1, &n2) != 1) {
    OPENSSL_cleanse(out, ctlen);
    goto done;
  }
  *outlen = (size_t)n1 + (size_t)n2;
  rc = 0;
done:
  EVP_CIPHER_CTX_free(cctx);
  OPENSSL_cleanse(enc, sizeof enc);
  OPENSSL_cleanse(mac, sizeof mac);
  OPENSSL_cleanse(tag, sizeof tag);
  return rc;
}

/* }====================================================== */


/* The master key set, in one locked allocation: the audit MAC key, then
** one slot per master key version (a key-encryption key), oldest first;
** the last is the primary, which wraps new and rewrapped data keys. The
** older versions only unwrap, until they are retired.
**
** On disk a master key file is either the original 32 raw bytes (key
** version 1; the audit key is then HKDF-SHA256(key, info "switchboard v1
** audit")) or a key set, which `vault rotate` writes:
**
**   "SBMK" | 0x02 (format) | n (1..MAX_VERSIONS) | audit key(32) |
**   n * (u32be version | key(32))          versions increasing, last primary
**
** The audit key is carried unchanged from the first key into every key set
** (a rotation rotates the keys that wrap data keys, not the audit chain's
** key), so the chain and its anchors verify across rotations.
**
** A wrapped data key under version v is u32be(v) | the v1 blob of the data
** key under that version; a bare v1 blob (98 bytes, written before key
** versions) is under version 1. The prefix is a hint: under another
** version the blob's tag does not verify. */
#define MAX_VERSIONS 16
#define KEYSET_HDR 6
#define KEYSET_FORMAT 0x02
#define KEYSET_ENTRY (4 + KEY_LEN)
#define KEYSET_LEN(n) (KEYSET_HDR + KEY_LEN + (size_t)(n) * KEYSET_ENTRY)
#define KEYSET_MEM (KEY_LEN * (1 + MAX_VERSIONS))
#define WRAP_PREFIX 4
#define WRAPPED_LEN (WRAP_PREFIX + HDR_LEN + IV_LEN + WRAPPED_CT_LEN + TAG_LEN)
#define LEGACY_WRAPPED_LEN (HDR_LEN + IV_LEN + WRAPPED_CT_LEN + TAG_LEN)

static const unsigned char keyset_magic[4] = { 'S', 'B', 'M', 'K' };

typedef struct Master {
  unsigned char *mem;       /* NULL: closed */
  size_t maplen;
  int n;                    /* versions held; slot n - 1 is the primary */
  uint32_t ver[MAX_VERSIONS];
} Master;

#define AUDIT_KEY(m) ((m)->mem)
#define SLOT_KEY(m, i) ((m)->mem + KEY_LEN + (size_t)(i) * KEY_LEN)

static Master *
check_master(lua_State *L)
{
  Master *m = (Master *)luaL_checkudata(L, 1, MASTER_MT);
  if (m->mem == NULL)
    luaL_error(L, "attempt to use a closed master key");
  return m;
}

static int
master_close(lua_State *L)
{
  Master *m = (Master *)luaL_checkudata(L, 1, MASTER_MT);
  if (m->mem != NULL) {
    sec_free(m->mem, m->maplen);
    m->mem = NULL;
    m->maplen = 0;
    m->n = 0;
  }
  return 0;
}

static int
master_tostring(lua_State *L)
{
  Master *m = (Master *)luaL_checkudata(L, 1, MASTER_MT);
  lua_pushstring(L, m->mem == NULL ? MASTER_MT " (closed)" : MASTER_MT);
  return 1;
}

/* [-0, +1, m] A new Master in its closed state. */
static Master *
new_master(lua_State *L)
{
  Master *m = (Master *)lua_newuserdatauv(L, sizeof *m, 0);
  memset(m, 0, sizeof *m);
  luaL_setmetatable(L, MASTER_MT);
  return m;
}

/* the slot of version v, or -1 */
static int
find_version(const Master *m, uint32_t v)
{
  for (int i = 0; i < m->n; i++)
    if (m->ver[i] == v)
      return i;
  return -1;
}

static void
put_u32be(unsigned char out[4], uint32_t v)
{
  out[0] = (unsigned char)(v >> 24);
  out[1] = (unsigned char)(v >> 16);
  out[2] = (unsigned char)(v >> 8);
  out[3] = (unsigned char)v;
}

static uint32_t
get_u32be(const unsigned char in[4])
{
  return ((uint32_t)in[0] << 24) | ((uint32_t)in[1] << 16)
         | ((uint32_t)in[2] << 8) | (uint32_t)in[3];
}

/* [-0, +2, m] nil, "master key file <path>: <why>" */
static int
master_fail(lua_State *L, const char *path, const char *why)
{
  luaL_pushfail(L);
  lua_pushfstring(L, "master key file %s: %s", path, why);
  return 2;
}

static int
read_full(int fd, unsigned char *buf, size_t len)
{
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    got += (size_t)n;
  }
  return 0;
}

static int
write_full(int fd, const unsigned char *buf, size_t len)
{
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, buf + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    done += (size_t)n;
  }
  return 0;
}

/* Fill m (its memory allocated) from the file's len bytes in buf: a raw
** 32-byte key or a key set. NULL, or why not. */
static const char *
parse_keyset(Master *m, const unsigned char *buf, size_t len)
{
  if (len == KEY_LEN) {
    memcpy(SLOT_KEY(m, 0), buf, KEY_LEN);
    m->ver[0] = 1;
    m->n = 1;
    if (hkdf_one(SLOT_KEY(m, 0), info_audit, sizeof info_audit - 1,
                 AUDIT_KEY(m)) != 0)
      return "audit key derivation failed";
    return NULL;
  }
  if (len < KEYSET_LEN(1) || memcmp(buf, keyset_magic, 4) != 0
      || buf[4] != KEYSET_FORMAT)
    return "is neither a 32-byte key nor a key set";
  int n = buf[5];
  if (n < 1 || n > MAX_VERSIONS || len != KEYSET_LEN(n))
    return "key set: its count of versions does not match its size";
  const unsigned char *p = buf + KEYSET_HDR + KEY_LEN;
  for (int i = 0; i < n; i++, p += KEYSET_ENTRY) {
    uint32_t v = get_u32be(p);
    if (v == 0 || (i > 0 && v <= m->ver[i - 1]))
      return "key set: versions must be increasing whole numbers from 1";
    m->ver[i] = v;
    memcpy(SLOT_KEY(m, i), p + 4, KEY_LEN);
  }
  memcpy(AUDIT_KEY(m), buf + KEYSET_HDR, KEY_LEN);
  m->n = n;
  return NULL;
}

/* vault.load_master(path) -> Master | nil, err */
static int
vault_load_master(lua_State *L)
{
  const char *path = luaL_checkstring(L, 1);
  Master *m = new_master(L);
  char why[160];
  /* O_NONBLOCK: a FIFO planted at the path must not hang the open */
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno;
    if (e == ELOOP)
      return master_fail(L, path, "is a symbolic link; refusing to follow it");
    return master_fail(L, path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return master_fail(L, path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return master_fail(L, path, "is not a regular file");
  }
  if (st.st_uid != geteuid()) {
    close(fd);
    snprintf(why, sizeof why,
             "owned by uid %lu, not by this process's uid %lu; chown it",
             (unsigned long)st.st_uid, (unsigned long)geteuid());
    return master_fail(L, path, why);
  }
  if ((st.st_mode & 077) != 0) {
    close(fd);
    snprintf(why, sizeof why,
             "mode %04o lets group or others %s it; chmod 600",
             (unsigned)(st.st_mode & 07777),
             (st.st_mode & 044) != 0 ? "read" : "access");
    return master_fail(L, path, why);
  }
  if (st.st_size != KEY_LEN
      && (st.st_size < (off_t)KEYSET_LEN(1)
          || st.st_size > (off_t)KEYSET_LEN(MAX_VERSIONS))) {
    close(fd);
    snprintf(why, sizeof why,
             "size is %lld bytes, must be exactly %d (a key) or a key set's",
             (long long)st.st_size, KEY_LEN);
    return master_fail(L, path, why);
  }
  size_t len = (size_t)st.st_size;
  size_t maplen = 0, buflen = 0;
  unsigned char *mem = sec_alloc(KEYSET_MEM, &maplen);
  unsigned char *buf = sec_alloc(len, &buflen);
  if (mem == NULL || buf == NULL) {
    close(fd);
    sec_free(mem, maplen);
    sec_free(buf, buflen);
    return master_fail(L, path, "cannot allocate locked memory");
  }
  if (read_full(fd, buf, len) != 0) {
    int e = errno;
    close(fd);
    sec_free(mem, maplen);
    sec_free(buf, buflen);
    return master_fail(L, path, e != 0 ? strerror(e) : "short read");
  }
  close(fd);
  m->mem = mem;
  m->maplen = maplen;
  const char *bad = parse_keyset(m, buf, len);
  sec_free(buf, buflen);
  if (bad != NULL) {
    sec_free(m->mem, m->maplen);
    memset(m, 0, sizeof *m);
    return master_fail(L, path, bad);
  }
  return 1;
}

/* vault.create_master(path) -> true | nil, err */
static int
vault_create_master(lua_State *L)
{
  const char *path = luaL_checkstring(L, 1);
  unsigned char key[KEY_LEN];
  if (RAND_bytes(key, KEY_LEN) != 1)
    return master_fail(L, path, "random generator failure");
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0600);
  if (fd < 0) {
    int e = errno;
    OPENSSL_cleanse(key, sizeof key);
    if (e == EEXIST)
      return master_fail(L, path, "already exists; refusing to overwrite it");
    return master_fail(L, path, strerror(e));
  }
  int ok = fchmod(fd, 0600) == 0 && write_full(fd, key, KEY_LEN) == 0
           && fsync(fd) == 0;
  int e = errno;
  OPENSSL_cleanse(key, sizeof key);
  if (close(fd) != 0 && ok) {
    ok = 0;
    e = errno;
  }
  if (!ok) {
    unlink(path);
    return master_fail(L, path, strerror(e));
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* [-0, +2, m] nil, "<path>: <why>" */
static int
file_fail(lua_State *L, const char *path, int e)
{
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", path, strerror(e));
  return 2;
}

/* Replace path atomically with len bytes of data: they go to tmp (created
** anew, mode 0600, never through a symlink), are fsynced, renamed over
** path, and dir is fsynced so the rename survives a crash. 0, or an errno
** and in *failed the name it is about. */
static int
write_private_file(const char *path, const char *tmp, const char *dir,
                   const unsigned char *data, size_t len, const char **failed)
{
  *failed = tmp;
  if (unlink(tmp) != 0 && errno != ENOENT)
    return errno;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0600);
  if (fd < 0)
    return errno;
  *failed = path;
  int ok = fchmod(fd, 0600) == 0 && write_full(fd, data, len) == 0
           && fsync(fd) == 0;
  int e = errno;
  if (close(fd) != 0 && ok) {
    ok = 0;
    e = errno;
  }
  if (ok && rename(tmp, path) != 0) {
    ok = 0;
    e = errno;
  }
  if (!ok) {
    unlink(tmp);
    return e != 0 ? e : EIO;
  }
  *failed = dir;
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return errno;
  ok = fsync(dfd) == 0;
  e = errno;
  close(dfd);
  return ok ? 0 : (e != 0 ? e : EIO);
}

/* [-0, +2, m] "<path>.tmp" and the directory of path, for
** write_private_file */
static void
push_tmp_dir(lua_State *L, const char *path, const char **tmp,
             const char **dir)
{
  *tmp = lua_pushfstring(L, "%s.tmp", path);
  const char *slash = strrchr(path, '/');
  if (slash == NULL)
    *dir = lua_pushstring(L, ".");
  else if (slash == path)
    *dir = lua_pushstring(L, "/");
  else
    *dir = lua_pushlstring(L, path, (size_t)(slash - path));
}

/* vault.write_private(path, data) -> true | nil, err
** Replaces path atomically (write_private_file). */
static int
vault_write_private(lua_State *L)
{
  size_t plen, len;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1,
                "a path without NUL bytes");
  const char *tmp, *dir, *failed;
  push_tmp_dir(L, path, &tmp, &dir);
  int e = write_private_file(path, tmp, dir, (const unsigned char *)data, len,
                             &failed);
  if (e != 0)
    return file_fail(L, failed, e);
  lua_pushboolean(L, 1);
  return 1;
}

/* Write m's key set, without slot skip (or -1), to path. 0 or an errno,
** *failed naming the file. */
static int
save_keyset(lua_State *L, const Master *m, int count, int skip,
            const char *path, const char **failed)
{
  int n = count - (skip >= 0 ? 1 : 0);
  size_t len = KEYSET_LEN(n), maplen = 0;
  unsigned char *buf = sec_alloc(len, &maplen);
  *failed = path;
  if (buf == NULL)
    return ENOMEM;
  memcpy(buf, keyset_magic, 4);
  buf[4] = KEYSET_FORMAT;
  buf[5] = (unsigned char)n;
  memcpy(buf + KEYSET_HDR, AUDIT_KEY(m), KEY_LEN);
  unsigned char *p = buf + KEYSET_HDR + KEY_LEN;
  for (int i = 0; i < count; i++) {
    if (i == skip)
      continue;
    put_u32be(p, m->ver[i]);
    memcpy(p + 4, SLOT_KEY(m, i), KEY_LEN);
    p += KEYSET_ENTRY;
  }
  const char *tmp, *dir;
  push_tmp_dir(L, path, &tmp, &dir);
  int e = write_private_file(path, tmp, dir, buf, len, failed);
  sec_free(buf, maplen);
  return e;
}

/* Unwrap the data key of tenant into dek; 0 or -1. */
static int
unwrap_dek(Master *m, const char *tenant, size_t tlen, const char *wrapped,
           size_t wlen, unsigned char dek[KEY_LEN])
{
  /* a wrapped key is a 32-byte plaintext: exactly one size is valid, with
  ** 48 bytes of ciphertext, decrypted into the room OpenSSL documents */
  unsigned char buf[OPEN_ROOM(WRAPPED_CT_LEN)];
  size_t n = 0;
  uint32_t v = 1;
  const unsigned char *blob = (const unsigned char *)wrapped;
  if (wlen == WRAPPED_LEN) {
    v = get_u32be(blob);
    blob += WRAP_PREFIX;
    wlen -= WRAP_PREFIX;
  } else if (wlen != LEGACY_WRAPPED_LEN) {
    return -1;
  }
  int slot = find_version(m, v);
  if (slot < 0)
    return -1;
  if (open_raw(SLOT_KEY(m, slot), tenant, tlen, (const char *)field_data_key,
               sizeof field_data_key - 1, blob, wlen, buf, sizeof buf,
               &n) != 0)
    return -1;
  int rc = -1;
  if (n == KEY_LEN) {
    memcpy(dek, buf, KEY_LEN);
    rc = 0;
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return rc;
}

/* Wrap dek for tenant under the primary version into out (WRAPPED_LEN
** bytes). 0 or -1. */
static int
wrap_dek(Master *m, const char *tenant, size_t tlen,
         const unsigned char dek[KEY_LEN], unsigned char out[WRAPPED_LEN])
{
  int slot = m->n - 1;
  put_u32be(out, m->ver[slot]);
  return seal_raw(SLOT_KEY(m, slot), tenant, tlen,
                  (const char *)field_data_key, sizeof field_data_key - 1,
                  dek, KEY_LEN, out + WRAP_PREFIX, WRAPPED_LEN - WRAP_PREFIX);
}

/* master:new_data_key(tenant_id) -> wrapped key, version | nil, err */
static int
master_new_data_key(lua_State *L)
{
  Master *m = check_master(L);
  size_t tlen;
  const char *tenant = luaL_checklstring(L, 2, &tlen);
  unsigned char out[WRAPPED_LEN];
  unsigned char dek[KEY_LEN];
  int rc = -1;
  if (RAND_bytes(dek, KEY_LEN) == 1)
    rc = wrap_dek(m, tenant, tlen, dek, out);
  OPENSSL_cleanse(dek, sizeof dek);
  if (rc != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "cannot create a data key");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, sizeof out);
  lua_pushinteger(L, (lua_Integer)m->ver[m->n - 1]);
  return 2;
}

/* master:rewrap(wrapped_key, tenant_id) -> wrapped key, version | nil, err
** The same data key, wrapped under the primary version; it never leaves
** C. */
static int
master_rewrap(lua_State *L)
{
  Master *m = check_master(L);
  size_t wlen, tlen;
  const char *wrapped = luaL_checklstring(L, 2, &wlen);
  const char *tenant = luaL_checklstring(L, 3, &tlen);
  unsigned char out[WRAPPED_LEN];
  unsigned char dek[KEY_LEN];
  if (unwrap_dek(m, tenant, tlen, wrapped, wlen, dek) != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, DECRYPT_FAILED);
    return 2;
  }
  int rc = wrap_dek(m, tenant, tlen, dek, out);
  OPENSSL_cleanse(dek, sizeof dek);
  if (rc != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "encryption failed");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, sizeof out);
  lua_pushinteger(L, (lua_Integer)m->ver[m->n - 1]);
  return 2;
}

/* master:key_version(wrapped_key) -> the version its prefix names (1 for a
** bare blob) | nil for no wrapped key at all. A hint only: it does not say
** the key opens. */
static int
master_key_version(lua_State *L)
{
  check_master(L);
  size_t wlen;
  const char *w = luaL_checklstring(L, 2, &wlen);
  if (wlen == WRAPPED_LEN)
    lua_pushinteger(L, (lua_Integer)get_u32be((const unsigned char *)w));
  else if (wlen == LEGACY_WRAPPED_LEN)
    lua_pushinteger(L, 1);
  else
    luaL_pushfail(L);
  return 1;
}

/* master:versions() -> { versions held, oldest first }, primary version */
static int
master_versions(lua_State *L)
{
  Master *m = check_master(L);
  lua_createtable(L, m->n, 0);
  for (int i = 0; i < m->n; i++) {
    lua_pushinteger(L, (lua_Integer)m->ver[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, (lua_Integer)m->ver[m->n - 1]);
  return 2;
}

/* master:rotate(path) -> new version | nil, err
** A new random key version becomes the primary. The whole key set is
** written to path (atomically, mode 0600) before the new version is used,
** so nothing is ever wrapped under a key the file lacks. */
static int
master_rotate(lua_State *L)
{
  Master *m = check_master(L);
  const char *path = luaL_checkstring(L, 2);
  char why[120];
  if (m->n >= MAX_VERSIONS) {
    snprintf(why, sizeof why,
             "holds %d key versions, the most it can; retire one first",
             m->n);
    return master_fail(L, path, why);
  }
  uint32_t v = m->ver[m->n - 1];
  if (v == UINT32_MAX)
    return master_fail(L, path, "no key version is left after this one");
  unsigned char *slot = SLOT_KEY(m, m->n);
  if (RAND_bytes(slot, KEY_LEN) != 1) {
    OPENSSL_cleanse(slot, KEY_LEN);
    return master_fail(L, path, "random generator failure");
  }
  m->ver[m->n] = v + 1;
  const char *failed;
  int e = save_keyset(L, m, m->n + 1, -1, path, &failed);
  if (e != 0) {
    OPENSSL_cleanse(slot, KEY_LEN);
    return master_fail(L, failed, strerror(e));
  }
  m->n++;
  lua_pushinteger(L, (lua_Integer)(v + 1));
  return 1;
}

/* master:retire(path, version) -> true | nil, err
** Removes an older version: from path first (atomically), then from
** memory, its key wiped. The caller checks that nothing is wrapped
** under it. */
static int
master_retire(lua_State *L)
{
  Master *m = check_master(L);
  const char *path = luaL_checkstring(L, 2);
  lua_Integer v = luaL_checkinteger(L, 3);
  char why[120];
  int slot = v >= 1 && v <= (lua_Integer)UINT32_MAX
             ? find_version(m, (uint32_t)v) : -1;
  if (slot < 0) {
    snprintf(why, sizeof why, "holds no key version %lld", (long long)v);
    return master_fail(L, path, why);
  }
  if (slot == m->n - 1) {
    snprintf(why, sizeof why,
             "version %lld is the primary key; rotate before retiring it",
             (long long)v);
    return master_fail(L, path, why);
  }
  const char *failed;
  int e = save_keyset(L, m, m->n, slot, path, &failed);
  if (e != 0)
    return master_fail(L, failed, strerror(e));
  for (int i = slot; i < m->n - 1; i++) {
    m->ver[i] = m->ver[i + 1];
    memcpy(SLOT_KEY(m, i), SLOT_KEY(m, i + 1), KEY_LEN);
  }
  m->n--;
  OPENSSL_cleanse(SLOT_KEY(m, m->n), KEY_LEN);
  m->ver[m->n] = 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* master:seal(wrapped_key, tenant_id, field, plaintext) -> blob | nil, err */
static int
master_seal(lua_State *L)
{
  Master *m = check_master(L);
  size_t wlen, tlen, flen, ptlen;
  const char *wrapped = luaL_checklstring(L, 2, &wlen);
  const char *tenant = luaL_checklstring(L, 3, &tlen);
  const char *field = luaL_checklstring(L, 4, &flen);
  const char *pt = luaL_checklstring(L, 5, &ptlen);
  luaL_argcheck(L, ptlen <= MAX_PLAIN, 5, "plaintext too large");
  size_t outlen = sealed_len(ptlen);
  unsigned char *out = (unsigned char *)lua_newuserdatauv(L, outlen, 0);
  unsigned char dek[KEY_LEN];
  if (unwrap_dek(m, tenant, tlen, wrapped, wlen, dek) != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, DECRYPT_FAILED);
    return 2;
  }
  int rc = seal_raw(dek, tenant, tlen, field, flen,
                    (const unsigned char *)pt, ptlen, out, outlen);
  OPENSSL_cleanse(dek, sizeof dek);
  if (rc != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "encryption failed");
    return 2;
  }
  lua_pushlstring(L, (const char *)out, outlen);
  return 1;
}

/* Unwrap the data key and open the blob at stack index 5 into out
** (outcap bytes; bloblen suffices). 0 or -1. */
static int
open_field(lua_State *L, Master *m, unsigned char *out, size_t outcap,
           size_t *outlen)
{
  size_t wlen, tlen, flen, blen;
  const char *wrapped = lua_tolstring(L, 2, &wlen);
  const char *tenant = lua_tolstring(L, 3, &tlen);
  const char *field = lua_tolstring(L, 4, &flen);
  const char *blob = lua_tolstring(L, 5, &blen);
  unsigned char dek[KEY_LEN];
  if (unwrap_dek(m, tenant, tlen, wrapped, wlen, dek) != 0)
    return -1;
  int rc = open_raw(dek, tenant, tlen, field, flen,
                    (const unsigned char *)blob, blen, out, outcap, outlen);
  OPENSSL_cleanse(dek, sizeof dek);
  return rc;
}

static void
check_open_args(lua_State *L)
{
  for (int i = 2; i <= 5; i++)
    luaL_checkstring(L, i);
}

/* master:open(wrapped_key, tenant_id, field, blob) -> plaintext | nil, err */
static int
master_open(lua_State *L)
{
  Master *m = check_master(L);
  check_open_args(L);
  size_t blen = lua_rawlen(L, 5);
  unsigned char *out = (unsigned char *)lua_newuserdatauv(L, blen + 1, 0);
  size_t n = 0;
  if (open_field(L, m, out, blen + 1, &n) != 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, DECRYPT_FAILED);
    return 2;
  }
  lua_pushlstring(L, (const char *)out, n);
  OPENSSL_cleanse(out, blen + 1);
  return 1;
}

/* master:audit_mac(data) -> 64 lowercase hex digits:
** HMAC-SHA256(audit_key, data). The audit key (see the key set above) is
** in the master's locked page and never leaves C. */
static void push_hex(lua_State *L, const unsigned char *s, size_t len);

static int
master_audit_mac(lua_State *L)
{
  Master *m = check_master(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  unsigned char md[32];
  if (hmac_sha256(AUDIT_KEY(m), KEY_LEN, (const unsigned char *)data, len,
                  md) != 0)
    return luaL_error(L, "audit mac failed");
  push_hex(L, md, sizeof md);
  return 1;
}

/* A MAC context keyed with the audit key of the open master at idx, for
** core.auditchain (the key stays in C); the caller frees it with
** EVP_MAC_CTX_free. NULL when OpenSSL fails; raises when idx is not an
** open master. */
EVP_MAC_CTX *
sb_audit_mac_ctx(lua_State *L, int idx)
{
  Master *m = (Master *)luaL_checkudata(L, idx, MASTER_MT);
  if (m->mem == NULL)
    luaL_error(L, "attempt to use a closed master key");
  EVP_MAC_CTX *mctx = Alg.hmac_tmpl != NULL ? EVP_MAC_CTX_dup(Alg.hmac_tmpl)
                                            : NULL;
  if (mctx != NULL && EVP_MAC_init(mctx, AUDIT_KEY(m), KEY_LEN, NULL) != 1) {
    EVP_MAC_CTX_free(mctx);
    mctx = NULL;
  }
  return mctx;
}

/* }====================================================== */


/*
** {======================================================
** Credential
** =======================================================
*/

/* A credential is applied by core.http as one request header, by kind:
**   basic   Authorization: Basic base64(username ":" secret)
**   bearer  Authorization: Bearer secret
**   header  <name>: secret          (an API key header, e.g. X-Api-Key)
** The secret is only ever in this locked page and in the request's own
** header line (core.http, locked too); it never becomes a Lua value. */
typedef struct Credential {
  unsigned char *secret;      /* locked memory, NUL-terminated; NULL: closed */
  size_t slen;
  size_t maplen;
  SbCredKind kind;
  char *name;                 /* malloc'd: basic: username; header: header
                              ** name; bearer: NULL */
  size_t nlen;
  char *id;                   /* malloc'd label for the hint, or NULL */
  size_t idlen;
} Credential;

static const char *const cred_kinds[] = { "basic", "bearer", "header", NULL };

static Credential *
check_cred(lua_State *L)
{
  Credential *c = (Credential *)luaL_checkudata(L, 1, CRED_MT);
  if (c->secret == NULL)
    luaL_error(L, "attempt to use a closed credential");
  return c;
}

static void
free_label(char **p, size_t *len)
{
  if (*p != NULL) {
    OPENSSL_cleanse(*p, *len);
    free(*p);
    *p = NULL;
  }
  *len = 0;
}

static void
cred_release(Credential *c)
{
  if (c->secret != NULL) {
    sec_free(c->secret, c->maplen);
    c->secret = NULL;
  }
  free_label(&c->name, &c->nlen);
  free_label(&c->id, &c->idlen);
  c->slen = c->maplen = 0;
}

static int
cred_close(lua_State *L)
{
  Credential *c = (Credential *)luaL_checkudata(L, 1, CRED_MT);
  cred_release(c);
  return 0;
}

/* [-0, +1, m] "SK…1234": the first two and the last four characters of
** the username (basic) or of the id label (bearer, header); the whole
** hint is "…" when that is too short or absent. Never the secret. */
static void
push_hint(lua_State *L, const Credential *c)
{
  const char *s = c->kind == SB_CRED_BASIC ? c->name : c->id;
  size_t len = c->kind == SB_CRED_BASIC ? c->nlen : c->idlen;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (s != NULL && len >= 8)
    luaL_addlstring(&b, s, 2);
  luaL_addstring(&b, "\xe2\x80\xa6");
  if (s != NULL && len >= 8)
    luaL_addlstring(&b, s + len - 4, 4);
  luaL_pushresult(&b);
}

/* cred:username() -> the Basic username, or nil for another kind */
static int
cred_username(lua_State *L)
{
  Credential *c = check_cred(L);
  if (c->kind == SB_CRED_BASIC)
    lua_pushlstring(L, c->name, c->nlen);
  else
    lua_pushnil(L);
  return 1;
}

/* cred:kind() -> "basic" | "bearer" | "header", the header it sets */
static int
cred_kind(lua_State *L)
{
  Credential *c = check_cred(L);
  lua_pushstring(L, cred_kinds[c->kind]);
  if (c->kind == SB_CRED_HEADER)
    lua_pushlstring(L, c->name, c->nlen);
  else
    lua_pushliteral(L, "Authorization");
  return 2;
}

static int
cred_hint(lua_State *L)
{
  push_hint(L, check_cred(L));
  return 1;
}

static int
cred_tostring(lua_State *L)
{
  Credential *c = (Credential *)luaL_checkudata(L, 1, CRED_MT);
  if (c->secret == NULL) {
    lua_pushliteral(L, CRED_MT " (closed)");
    return 1;
  }
  push_hint(L, c);
  if (c->kind == SB_CRED_BASIC)
    lua_pushfstring(L, CRED_MT " (%s)", lua_tostring(L, -1));
  else
    lua_pushfstring(L, CRED_MT " (%s, %s)", cred_kinds[c->kind],
                    lua_tostring(L, -1));
  return 1;
}

/* Header names a "header" credential may not set: the ones the other
** kinds set (Authorization), the request's target and session (Host,
** Cookie) and the ones that frame the message or the connection. */
static const char *const reserved_headers[] = {
  "authorization", "proxy-authorization", "host", "cookie", "content-length",
  "content-type", "transfer-encoding", "connection", "keep-alive", "expect",
  "te", "trailer", "upgrade", NULL
};

#define MAX_HEADER_NAME 64

/* NULL when name is a header name a credential may set, else why not */
static const char *
header_name_error(const char *name, size_t len)
{
  if (len == 0 || len > MAX_HEADER_NAME)
    return "must be 1 to 64 characters";
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z')
          || (ch >= 'A' && ch <= 'Z') || strchr("!#$%&'*+-.^_`|~", ch) != NULL)
        || ch == '\0')
      return "must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)";
  }
  for (int i = 0; reserved_headers[i] != NULL; i++)
    if (strlen(reserved_headers[i]) == len
        && strncasecmp(reserved_headers[i], name, len) == 0)
      return "is reserved (use kind \"basic\" or \"bearer\" for Authorization)";
  return NULL;
}

/* 1 when the opened secret can go into its header as is: bearer, visible
** ASCII only (RFC 6750's token characters are a subset); header, a field
** value (visible characters, inner spaces and tabs, no CR, LF or other
** control byte). Basic secrets are Base64-encoded: any bytes. */
static int
secret_fits(SbCredKind kind, const unsigned char *s, size_t len)
{
  if (kind == SB_CRED_BASIC)
    return 1;
  if (len == 0)
    return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = s[i];
    int visible = ch > 0x20 && ch != 0x7f;
    int inner = (ch == ' ' || ch == '\t') && i > 0 && i + 1 < len;
    if (!(visible || (kind == SB_CRED_HEADER && inner)))
      return 0;
  }
  return 1;
}

/* [-0, +0, m] a malloc'd NUL-terminated copy of the string at idx, or
** raises; *len its length */
static char *
dup_arg(lua_State *L, int idx, const char *what, size_t *len)
{
  const char *s = lua_tolstring(L, idx, len);
  if (strlen(s) != *len)
    luaL_error(L, "credential %s: contains a NUL byte", what);
  char *p = (char *)malloc(*len + 1);
  if (p == NULL)
    luaL_error(L, "not enough memory");
  memcpy(p, s, *len + 1);
  return p;
}

/* Check the credential's description at idx (a username string, or a
** table { kind =, username =, header =, id = }) and copy its names into c
** (which owns them from then on). Raises on misuse. */
static void
cred_describe(lua_State *L, int idx, Credential *c)
{
  if (lua_type(L, idx) == LUA_TSTRING) {
    c->kind = SB_CRED_BASIC;
    c->name = dup_arg(L, idx, "username", &c->nlen);
    return;
  }
  if (lua_type(L, idx) != LUA_TTABLE)
    luaL_typeerror(L, idx, "username string or credential table");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k == NULL || !(strcmp(k, "kind") == 0 || strcmp(k, "username") == 0
                       || strcmp(k, "header") == 0 || strcmp(k, "id") == 0))
      luaL_error(L, "credential: unknown field '%s' (kind, username, header, id)",
                 k != NULL ? k : luaL_typename(L, -2));
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "credential %s: expected a string", k);
    lua_pop(L, 1);
  }
  int top = lua_gettop(L);
  if (lua_getfield(L, idx, "kind") != LUA_TSTRING)
    luaL_error(L, "credential kind: required, one of \"basic\", \"bearer\", "
               "\"header\"");
  const char *kind = lua_tostring(L, -1);
  int k = 0;
  while (cred_kinds[k] != NULL && strcmp(cred_kinds[k], kind) != 0)
    k++;
  if (cred_kinds[k] == NULL)
    luaL_error(L, "credential kind: '%s' is not one of \"basic\", \"bearer\", "
               "\"header\"", kind);
  c->kind = (SbCredKind)k;
  int user = lua_getfield(L, idx, "username") != LUA_TNIL;
  int header = lua_getfield(L, idx, "header") != LUA_TNIL;
  int id = lua_getfield(L, idx, "id") != LUA_TNIL;
  if (c->kind == SB_CRED_BASIC && !user)
    luaL_error(L, "credential username: required for kind \"basic\"");
  if (c->kind != SB_CRED_BASIC && user)
    luaL_error(L, "credential username: only for kind \"basic\"");
  if (c->kind == SB_CRED_HEADER && !header)
    luaL_error(L, "credential header: required for kind \"header\"");
  if (c->kind != SB_CRED_HEADER && header)
    luaL_error(L, "credential header: only for kind \"header\"");
  if (c->kind == SB_CRED_BASIC && id)
    luaL_error(L, "credential id: not for kind \"basic\" (its hint is the "
               "username's)");
  if (header) {
    size_t hlen;
    const char *h = lua_tolstring(L, top + 3, &hlen);
    const char *why = header_name_error(h, hlen);
    if (why != NULL)
      luaL_error(L, "credential header: '%s' %s", h, why);
  }
  if (user)
    c->name = dup_arg(L, top + 2, "username", &c->nlen);
  else if (header)
    c->name = dup_arg(L, top + 3, "header", &c->nlen);
  if (id)
    c->id = dup_arg(L, top + 4, "id", &c->idlen);
  lua_settop(L, top);
}

/* master:credential(wrapped_key, tenant_id, field, blob, username | desc)
**   -> Credential | nil, err
** desc = { kind = "basic", username = } | { kind = "bearer", id = } |
** { kind = "header", header = "X-Api-Key", id = } (id: a label for the
** hint, never the secret). err is "decryption failed", or for bearer and
** header kinds, when the secret cannot be sent in a header, "credential
** secret: not a valid <kind> value" (the secret is not shown). */
static int
master_credential(lua_State *L)
{
  Master *m = check_master(L);
  check_open_args(L);
  luaL_checkany(L, 6);
  size_t blen = lua_rawlen(L, 5);
  lua_settop(L, 6);
  Credential *c = (Credential *)lua_newuserdatauv(L, sizeof *c, 0);
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, CRED_MT);
  cred_describe(L, 6, c);               /* c owns its names: its __gc frees */
  size_t maplen = 0;
  unsigned char *secret = sec_alloc(blen + 1, &maplen);
  if (secret == NULL)
    return luaL_error(L, "not enough memory");
  c->secret = secret;
  c->maplen = maplen;
  size_t n = 0;
  if (open_field(L, m, secret, maplen, &n) != 0) {
    cred_release(c);
    luaL_pushfail(L);
    lua_pushliteral(L, DECRYPT_FAILED);
    return 2;
  }
  secret[n] = '\0';
  c->slen = n;
  if (!secret_fits(c->kind, secret, n)) {
    SbCredKind kind = c->kind;
    cred_release(c);
    luaL_pushfail(L);
    lua_pushfstring(L, "credential secret: not a valid %s value",
                    cred_kinds[kind]);
    return 2;
  }
  return 1;
}

int
sb_credential(lua_State *L, int idx, SbCredential *out)
{
  Credential *c = (Credential *)luaL_testudata(L, idx, CRED_MT);
  if (c == NULL || c->secret == NULL)
    return 0;
  out->kind = c->kind;
  out->name = c->name;
  out->nlen = c->nlen;
  out->secret = (const char *)c->secret;
  out->slen = c->slen;
  return 1;
}

/* }====================================================== */


/*
** {======================================================
** Hashing, comparison and encoding helpers
** =======================================================
*/

#define MAX_RANDOM (1 << 20)

/* vault.random(n) -> n random bytes */
static int
vault_random(lua_State *L)
{
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= MAX_RANDOM, 1, "out of range");
  luaL_Buffer b;
  unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
  if (n > 0 && RAND_bytes(p, (int)n) != 1) {
    luaL_pushfail(L);
    lua_pushliteral(L, "random generator failure");
    return 2;
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

static const char b64url_alphabet[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* [-0, +0, m] add base64url (no padding) of s to b */
static void
add_base64url(luaL_Buffer *b, const unsigned char *s, size_t len)
{
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    unsigned long v = ((unsigned long)s[i] << 16)
                      | ((unsigned long)s[i + 1] << 8) | s[i + 2];
    luaL_addchar(b, b64url_alphabet[(v >> 18) & 63]);
    luaL_addchar(b, b64url_alphabet[(v >> 12) & 63]);
    luaL_addchar(b, b64url_alphabet[(v >> 6) & 63]);
    luaL_addchar(b, b64url_alphabet[v & 63]);
  }
  if (len - i == 1) {
    unsigned long v = (unsigned long)s[i] << 16;
    luaL_addchar(b, b64url_alphabet[(v >> 18) & 63]);
    luaL_addchar(b, b64url_alphabet[(v >> 12) & 63]);
  } else if (len - i == 2) {
    unsigned long v = ((unsigned long)s[i] << 16)
                      | ((unsigned long)s[i + 1] << 8);
    luaL_addchar(b, b64url_alphabet[(v >> 18) & 63]);
    luaL_addchar(b, b64url_alphabet[(v >> 12) & 63]);
    luaL_addchar(b, b64url_alphabet[(v >> 6) & 63]);
  }
}

/* vault.token(prefix?) -> prefix .. 43 base64url chars (256 random bits) */
static int
vault_token(lua_State *L)
{
  size_t plen;
  const char *prefix = luaL_optlstring(L, 1, "", &plen);
  unsigned char rnd[32];
  if (RAND_bytes(rnd, sizeof rnd) != 1) {
    luaL_pushfail(L);
    lua_pushliteral(L, "random generator failure");
    return 2;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, prefix, plen);
  add_base64url(&b, rnd, sizeof rnd);
  OPENSSL_cleanse(rnd, sizeof rnd);
  luaL_pushresult(&b);
  return 1;
}

static int
vault_base64url(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_base64url(&b, (const unsigned char *)s, len);
  luaL_pushresult(&b);
  return 1;
}

void
sb_hex(const unsigned char *s, size_t len, char *out)
{
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[s[i] >> 4];
    out[2 * i + 1] = digits[s[i] & 15];
  }
}

/* [-0, +1, m] lowercase hex of s */
static void
push_hex(lua_State *L, const unsigned char *s, size_t len)
{
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, len * 2);
  sb_hex(s, len, p);
  luaL_pushresultsize(&b, len * 2);
}

static int
vault_hex(lua_State *L)
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len <= SIZE_MAX / 2, 1, "too long");
  push_hex(L, (const unsigned char *)s, len);
  return 1;
}

static int
sha256_of(lua_State *L, unsigned char md[32])
{
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned int mdlen = 0;
  if (Alg.sha256 == NULL || EVP_Digest(s, len, md, &mdlen, Alg.sha256, NULL) != 1 || mdlen != 32)
    return luaL_error(L, "sha256 failed");
  return 0;
}

static int
vault_sha256(lua_State *L)
{
  unsigned char md[32];
  sha256_of(L, md);
  lua_pushlstring(L, (const char *)md, sizeof md);
  return 1;
}

static int
vault_sha256_hex(lua_State *L)
{
  unsigned char md[32];
  sha256_of(L, md);
  push_hex(L, md, sizeof md);
  return 1;
}

/* vault.hmac_sha256(key, s) -> raw 32-byte tag */
static int
vault_hmac_sha256(lua_State *L)
{
  size_t klen, len;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *s = luaL_checklstring(L, 2, &len);
  unsigned char md[32];
  if (hmac_sha256((const unsigned char *)key, klen, (const unsigned char *)s,
                  len, md) != 0)
    return luaL_error(L, "hmac_sha256 failed");
  lua_pushlstring(L, (const char *)md, sizeof md);
  return 1;
}

/* vault.equal(a, b) -> boolean, in time that depends on the lengths only */
static int
vault_equal(lua_State *L)
{
  size_t la, lb;
  const char *a = luaL_checklstring(L, 1, &la);
  const char *b = luaL_checklstring(L, 2, &lb);
  /* on a length mismatch, still compare a with itself so the work done
  ** does not depend on where the contents differ */
  int same = CRYPTO_memcmp(a, la == lb ? b : a, la) == 0;
  lua_pushboolean(L, same & (la == lb));
  return 1;
}

/* }====================================================== */


static const luaL_Reg master_methods[] = {
  { "new_data_key", master_new_data_key },
  { "rewrap", master_rewrap },
  { "key_version", master_key_version },
  { "versions", master_versions },
  { "rotate", master_rotate },
  { "retire", master_retire },
  { "seal", master_seal },
  { "open", master_open },
  { "credential", master_credential },
  { "audit_mac", master_audit_mac },
  { "close", master_close },
  { NULL, NULL }
};

static const luaL_Reg master_meta[] = {
  { "__gc", master_close },
  { "__close", master_close },
  { "__tostring", master_tostring },
  { "__index", NULL },
  { NULL, NULL }
};

static const luaL_Reg cred_methods[] = {
  { "username", cred_username },
  { "kind", cred_kind },
  { "hint", cred_hint },
  { "close", cred_close },
  { NULL, NULL }
};

static const luaL_Reg cred_meta[] = {
  { "__gc", cred_close },
  { "__close", cred_close },
  { "__tostring", cred_tostring },
  { "__index", NULL },
  { NULL, NULL }
};

static const luaL_Reg vault_funcs[] = {
  { "load_master", vault_load_master },
  { "create_master", vault_create_master },
  { "write_private", vault_write_private },
  { "random", vault_random },
  { "token", vault_token },
  { "sha256", vault_sha256 },
  { "sha256_hex", vault_sha256_hex },
  { "hmac_sha256", vault_hmac_sha256 },
  { "equal", vault_equal },
  { "hex", vault_hex },
  { "base64url", vault_base64url },
  { NULL, NULL }
};

/* [-0, +0, m] metatable name with metamethods meta and __index methods */
static void
createmeta(lua_State *L, const char *name, const luaL_Reg *meta,
           const luaL_Reg *methods)
{
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

#define STATE_MT "core.vault.State"

/* __gc of the module state (lua_close): the algorithms and the pool of
** locked pages go back. */
static int
state_gc(lua_State *L)
{
  (void)L;
  if (Alg.users > 0 && --Alg.users == 0) {
    algs_free();
    pool_drain();
  }
  return 0;
}

int
luaopen_core_vault(lua_State *L)
{
  if (Alg.users == 0 && algs_fetch() != 0)
    return luaL_error(L, "core.vault: OpenSSL algorithms unavailable");
  Alg.users++;
  Pool.closed = 0;
  lua_newuserdatauv(L, 1, 0);
  if (luaL_newmetatable(L, STATE_MT)) {
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, STATE_MT);
  createmeta(L, MASTER_MT, master_meta, master_methods);
  createmeta(L, CRED_MT, cred_meta, cred_methods);
  luaL_newlib(L, vault_funcs);
  return 1;
}
