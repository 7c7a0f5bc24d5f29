/* The first part of the validator's decision, compiled: shape and checksum of a token, its
 * HMAC-SHA256 under each pepper, and the lookup of the digest in the projection's digest -> row dict.
 *
 * In Python this part cost ~1.6 us a request (a regex, a base62 decode, zlib.crc32, two copied hashlib
 * states and their digests per pepper); here it is one call: the HMAC pads of each pepper are hashed
 * once (`Hmac`), so a request costs a struct copy of two SHA-256 states and two compressions.
 * services/validator/keyring.py, token_shape.py and domain.py keep the Python code as the fallback and
 * the reference; the unit tests (tests/unit/test_validator_cfastpath.py) hold the two to the same answers.
 *
 * The low-level SHA256_* functions are deprecated in OpenSSL 3 but exported, and they use the CPU's
 * SHA extensions where it has them; the EVP interface would look the digest up and allocate per call.
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 64
#define DIGEST 32
#define CHECKSUM_LEN 6
#define BODY_LEN 36
/* cnx_prod_ + 36: the longest token; cnx_stg_ and cnx_dev_ make 44. */
#define MAX_TOKEN_LEN 45

/* base62 digit value of a byte, -1 for anything else (the alphabet is 0-9A-Za-z, as shared/tokens.py). */
static int8_t base62[256];
/* CRC-32 (IEEE, reflected, as zlib.crc32): a table here rather than a link to zlib, one dependency less. */
static uint32_t crc_table[256];

static void
init_tables(void)
{
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    memset(base62, -1, sizeof(base62));
    for (int i = 0; i < 62; i++) {
        base62[(unsigned char)alphabet[i]] = (int8_t)i;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[n] = c;
    }
}

static uint32_t
crc32_of(const unsigned char *data, Py_ssize_t len)
{
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < len; i++) {
        c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    }
    return c ^ 0xFFFFFFFFu;
}

/* The answers of shared.tokens.is_well_formed for a str: `cnx_<prod|stg|dev>_`, 36 base62 characters,
 * the last 6 of them the CRC32 of everything before, big-endian base62. Reads the str's own buffer. */
static int
well_formed(PyObject *key, const unsigned char **data_out, Py_ssize_t *len_out)
{
    if (!PyUnicode_Check(key)) {
        return 0;
    }
#if PY_VERSION_HEX < 0x030C0000
    /* A legacy wchar_t str (3.11 still has them) gets its compact form; fails only without memory. */
    if (PyUnicode_READY(key) < 0) {
        return -1;
    }
#endif
    if (!PyUnicode_IS_ASCII(key)) {
        return 0;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    const unsigned char *data = PyUnicode_1BYTE_DATA(key);
    Py_ssize_t head;
    if (len == MAX_TOKEN_LEN && memcmp(data, "cnx_prod_", 9) == 0) {
        head = 9;
    }
    else if (len == MAX_TOKEN_LEN - 1 &&
             (memcmp(data, "cnx_stg_", 8) == 0 || memcmp(data, "cnx_dev_", 8) == 0)) {
        head = 8;
    }
    else {
        return 0;
    }
    /* len == head + BODY_LEN here, so every index below is inside the string. */
    int bad = 0;
    for (Py_ssize_t i = head; i < len - CHECKSUM_LEN; i++) {
        bad |= base62[data[i]];
    }
    uint64_t checksum = 0;
    for (Py_ssize_t i = len - CHECKSUM_LEN; i < len; i++) {
        int digit = base62[data[i]];
        bad |= digit;
        checksum = checksum * 62 + (uint64_t)digit;
    }
    /* Any -1 sets the sign bit of `bad`; valid digits are 0..61 and leave it clear. */
    if (bad < 0) {
        return 0;
    }
    /* 62**6 > 2**32: every 6-digit value is one number, so comparing numbers is comparing texts. */
    if (checksum != crc32_of(data, len - CHECKSUM_LEN)) {
        return 0;
    }
    *data_out = data;
    *len_out = len;
    return 1;
}

typedef struct {
    PyObject_HEAD
    /* The SHA-256 states after the inner and the outer pad block (RFC 2104). As good as the pepper to
     * anyone who reads them: never exposed, wiped on deallocation. */
    SHA256_CTX inner;
    SHA256_CTX outer;
} HmacObject;

static PyTypeObject HmacType;

static int
hmac_compute(const HmacObject *self, const unsigned char *data, size_t len, unsigned char out[DIGEST])
{
    SHA256_CTX ctx = self->inner;
    if (!SHA256_Update(&ctx, data, len) || !SHA256_Final(out, &ctx)) {
        goto fail;
    }
    ctx = self->outer;
    if (!SHA256_Update(&ctx, out, DIGEST) || !SHA256_Final(out, &ctx)) {
        goto fail;
    }
    return 0;
fail:
    OPENSSL_cleanse(&ctx, sizeof(ctx));
    PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
    return -1;
}

static PyObject *
Hmac_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pepper", NULL};
    Py_buffer pepper;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:Hmac", kwlist, &pepper)) {
        return NULL;
    }
    unsigned char key[BLOCK], pad[BLOCK];
    memset(key, 0, sizeof(key));
    int ok = 1;
    if (pepper.len > BLOCK) {
        /* A key longer than the block is replaced by its hash (RFC 2104, as hmac.new does). */
        SHA256_CTX ctx;
        ok = SHA256_Init(&ctx) && SHA256_Update(&ctx, pepper.buf, (size_t)pepper.len) && SHA256_Final(key, &ctx);
        OPENSSL_cleanse(&ctx, sizeof(ctx));
    }
    else {
        memcpy(key, pepper.buf, (size_t)pepper.len);
    }
    PyBuffer_Release(&pepper);

    HmacObject *self = NULL;
    if (ok) {
        self = (HmacObject *)type->tp_alloc(type, 0);
    }
    if (self != NULL) {
        for (int i = 0; i < BLOCK; i++) {
            pad[i] = key[i] ^ 0x36;
        }
        ok = SHA256_Init(&self->inner) && SHA256_Update(&self->inner, pad, BLOCK);
        for (int i = 0; i < BLOCK; i++) {
            pad[i] = key[i] ^ 0x5C;
        }
        ok = ok && SHA256_Init(&self->outer) && SHA256_Update(&self->outer, pad, BLOCK);
    }
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(pad, sizeof(pad));
    if (self == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        }
        return NULL;
    }
    if (!ok) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        return NULL;
    }
    return (PyObject *)self;
}

static void
Hmac_dealloc(HmacObject *self)
{
    OPENSSL_cleanse(&self->inner, sizeof(self->inner));
    OPENSSL_cleanse(&self->outer, sizeof(self->outer));
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Hmac_repr(PyObject *self)
{
    return PyUnicode_FromString("Hmac(<secret>)");
}

PyDoc_STRVAR(Hmac_digest_doc,
             "digest($self, key, /)\n--\n\n"
             "HMAC-SHA256(pepper, key.encode()): the 32 raw bytes, for any str.");

static PyObject *
Hmac_digest(HmacObject *self, PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "digest() argument must be str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *data = PyUnicode_AsUTF8AndSize(key, &len);
    if (data == NULL) {
        return NULL;
    }
    unsigned char out[DIGEST];
    if (hmac_compute(self, (const unsigned char *)data, (size_t)len, out) < 0) {
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, DIGEST);
}

static PyObject *
Hmac_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Pickling would write the pad states, which are as good as the pepper. */
    PyErr_SetString(PyExc_TypeError, "cannot pickle Hmac objects");
    return NULL;
}

static PyMethodDef Hmac_methods[] = {
    {"digest", (PyCFunction)Hmac_digest, METH_O, Hmac_digest_doc},
    {"__reduce__", Hmac_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Hmac_doc,
             "Hmac(pepper: bytes)\n--\n\n"
             "HMAC-SHA256 under one pepper, its pad blocks hashed once. The pepper is not kept, and\n"
             "neither it nor the states derived from it appear in a repr or an error.");

static PyTypeObject HmacType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.validator._fastpath.Hmac",
    .tp_basicsize = sizeof(HmacObject),
    .tp_dealloc = (destructor)Hmac_dealloc,
    .tp_repr = Hmac_repr,
    /* No Py_TPFLAGS_BASETYPE: find_row checks the exact type, one pointer comparison. */
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Hmac_doc,
    .tp_methods = Hmac_methods,
    .tp_new = Hmac_new,
};

PyDoc_STRVAR(find_row_doc,
             "find_row(key, hmacs, rows, /)\n--\n\n"
             "-1 when key is not a well-formed token (not a str, or not cnx_<env>_ with 36 base62\n"
             "characters and a matching checksum); else rows[digest] for the first Hmac in the tuple\n"
             "hmacs whose digest of key is in the dict rows, or None when none is.");

static PyObject *
find_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "find_row() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *key = args[0], *hmacs = args[1], *rows = args[2];
    if (!PyTuple_Check(hmacs)) {
        PyErr_Format(PyExc_TypeError, "find_row() hmacs must be a tuple, not %.100s", Py_TYPE(hmacs)->tp_name);
        return NULL;
    }
    if (!PyDict_Check(rows)) {
        PyErr_Format(PyExc_TypeError, "find_row() rows must be a dict, not %.100s", Py_TYPE(rows)->tp_name);
        return NULL;
    }
    /* Checked whatever the key, so that a wrong call fails on the first request, not the first good one. */
    Py_ssize_t n = PyTuple_GET_SIZE(hmacs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *hmac = PyTuple_GET_ITEM(hmacs, i);
        if (!Py_IS_TYPE(hmac, &HmacType)) {
            PyErr_Format(PyExc_TypeError, "find_row() hmacs[%zd] must be an Hmac, not %.100s", i,
                         Py_TYPE(hmac)->tp_name);
            return NULL;
        }
    }
    const unsigned char *data = NULL;
    Py_ssize_t len = 0;
    int formed = well_formed(key, &data, &len);
    if (formed < 0) {
        return NULL;
    }
    if (!formed) {
        return PyLong_FromLong(-1);
    }
    /* `data` is the str's own buffer: the caller's reference keeps it alive through any Python code
     * a dict lookup runs (a key's __eq__), and a str never changes. */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char out[DIGEST];
        if (hmac_compute((HmacObject *)PyTuple_GET_ITEM(hmacs, i), data, (size_t)len, out) < 0) {
            return NULL;
        }
        PyObject *digest = PyBytes_FromStringAndSize((const char *)out, DIGEST);
        if (digest == NULL) {
            return NULL;
        }
        PyObject *row = PyDict_GetItemWithError(rows, digest); /* borrowed */
        Py_XINCREF(row);
        Py_DECREF(digest);
        if (row != NULL) {
            return row;
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"find_row", (PyCFunction)(void (*)(void))find_row, METH_FASTCALL, find_row_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "services.validator._fastpath",
    .m_doc = "The validator's token check, HMAC-SHA256 and digest lookup in C (see domain.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    init_tables();
    if (PyType_Ready(&HmacType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&HmacType);
    if (PyModule_AddObject(module, "Hmac", (PyObject *)&HmacType) < 0) {
        Py_DECREF(&HmacType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
