#!/usr/bin/env python3
"""Error paths against a running cairn (plain HTTP): each must get the right S3 error code, and nothing may be
stored. Raw requests are signed by the small SigV4 implementation below so that headers, bodies and timing
can be made wrong on purpose.

Environment: ENDPOINT (http://127.0.0.1:PORT), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
Prints "OK <n> checks".
"""
import base64
import datetime
import hashlib
import hmac
import os
import socket
import sys
import time
import urllib.parse
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
HOSTPORT = ENDPOINT.split("://", 1)[1]
HOST, PORT = HOSTPORT.rsplit(":", 1)
PORT = int(PORT)
AK = os.environ["AWS_ACCESS_KEY_ID"]
SK = os.environ["AWS_SECRET_ACCESS_KEY"]
REGION = "us-east-1"
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def sign(method, path, query="", headers=None, payload_hash="UNSIGNED-PAYLOAD", secret=SK, host=HOSTPORT, when=None):
    """Returns the headers of a SigV4-signed request (header auth)."""
    now = when or datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    h = {k.lower(): v for k, v in (headers or {}).items()}
    h["host"] = host
    h["x-amz-date"] = amz_date
    h["x-amz-content-sha256"] = payload_hash
    signed = sorted(h)
    canon_headers = "".join("%s:%s\n" % (k, str(h[k]).strip()) for k in signed)
    qs = "&".join(sorted(query.split("&"))) if query else ""
    canon = "\n".join([method, path, qs, canon_headers, ";".join(signed), payload_hash])
    scope = "%s/%s/s3/aws4_request" % (date, REGION)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256_hex(canon.encode())])
    k = ("AWS4" + secret).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (AK, scope, ";".join(signed), sig)
    return h


def raw(method, path, headers, body=b"", send_bytes=None, query="", abort=False):
    """Sends a request over a fresh socket; `send_bytes` lets a body be cut short. Returns (status, text)."""
    s = socket.create_connection((HOST, PORT), timeout=20)
    target = path + ("?" + query if query else "")
    head = "%s %s HTTP/1.1\r\n" % (method, target)
    for k, v in headers.items():
        head += "%s: %s\r\n" % (k, v)
    if "content-length" not in {k.lower() for k in headers}:
        head += "content-length: %d\r\n" % len(body)
    head += "connection: close\r\n\r\n"
    s.sendall(head.encode() + (body if send_bytes is None else body[:send_bytes]))
    if abort:
        # RST instead of FIN: the client vanished mid-upload.
        import struct
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return None, ""
    if send_bytes is not None:
        s.shutdown(socket.SHUT_WR)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    text = data.decode("utf-8", "replace")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else None
    return status, text


def code_of(text):
    i = text.find("<Code>")
    return text[i + 6:text.find("</Code>")] if i >= 0 else None


def client(secret=SK, **cfg):
    return boto3.client(
        "s3", endpoint_url=ENDPOINT, aws_access_key_id=AK, aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **cfg),
    )


def client_error(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("%s should have failed" % fn.__name__)


def absent(s3, bucket, key, what):
    code = client_error(s3.head_object, Bucket=bucket, Key=key)
    check(code[1] == 404, "%s: %s/%s must not be stored, got %r" % (what, bucket, key, code))


def main():
    s3 = client()
    b = "errors"
    s3.create_bucket(Bucket=b)
    s3.put_object(Bucket=b, Key="exists", Body=b"data")

    # bad signature (wrong secret)
    bad = client(secret="not-the-secret-key")
    check(client_error(bad.put_object, Bucket=b, Key="badsig", Body=b"x")[0] == "SignatureDoesNotMatch", "bad signature")
    absent(s3, b, "badsig", "bad signature")
    # unknown access key
    h = sign("GET", "/" + b)
    h["authorization"] = h["authorization"].replace(AK, "NOSUCHKEY")
    st, text = raw("GET", "/" + b, h)
    check(st == 403 and code_of(text) in ("InvalidAccessKeyId", "SignatureDoesNotMatch"), "unknown key: %s %s" % (st, code_of(text)))
    # anonymous
    st, text = raw("GET", "/" + b, {"host": HOSTPORT})
    check(st == 403 and code_of(text) == "AccessDenied", "anonymous: %s %s" % (st, text[:200]))

    # SigV2 in header and query form
    st, text = raw("GET", "/" + b, {"host": HOSTPORT, "date": "Mon, 01 Jan 2024 00:00:00 GMT", "authorization": "AWS %s:c2lnbmF0dXJl" % AK})
    check(st == 400 and code_of(text) == "InvalidRequest", "SigV2 header: %s %s" % (st, code_of(text)))
    st, text = raw("GET", "/%s/exists" % b, {"host": HOSTPORT}, query="AWSAccessKeyId=%s&Expires=4102444800&Signature=abc%%3D" % AK)
    check(st == 400 and code_of(text) == "InvalidRequest", "SigV2 query: %s %s" % (st, code_of(text)))

    # presigned URLs: works, expires, capped at 7 days, no unsigned x-amz-* headers
    url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "exists"}, ExpiresIn=60)
    check(urllib.request.urlopen(url).read() == b"data", "presigned GET")
    short = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "exists"}, ExpiresIn=1)
    time.sleep(2.1)
    try:
        urllib.request.urlopen(short)
        check(False, "expired presign must fail")
    except urllib.error.HTTPError as e:
        check(e.code == 403 and code_of(e.read().decode()) == "AccessDenied", "expired presign: %s" % e.code)
    week = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "exists"}, ExpiresIn=7 * 24 * 3600 + 1)
    try:
        urllib.request.urlopen(week)
        check(False, "presign beyond 7 days must fail")
    except urllib.error.HTTPError as e:
        check(e.code == 400 and code_of(e.read().decode()) == "AuthorizationQueryParametersError", "7 days: %s" % e.code)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "presigned-put"}, ExpiresIn=60)
    req = urllib.request.Request(put_url, data=b"evil", method="PUT", headers={"x-amz-meta-added": "1"})
    try:
        urllib.request.urlopen(req)
        check(False, "unsigned x-amz header on presigned PUT must fail")
    except urllib.error.HTTPError as e:
        check(e.code == 403 and code_of(e.read().decode()) == "AccessDenied", "unsigned header: %s" % e.code)
    absent(s3, b, "presigned-put", "presign with unsigned header")
    req = urllib.request.Request(put_url, data=b"fine", method="PUT")
    urllib.request.urlopen(req).read()
    check(s3.get_object(Bucket=b, Key="presigned-put")["Body"].read() == b"fine", "presigned PUT")

    # unknown bucket / key
    check(client_error(s3.get_object, Bucket="no-such-bucket", Key="k")[0] == "NoSuchBucket", "NoSuchBucket")
    check(client_error(s3.get_object, Bucket=b, Key="no-such-key")[0] == "NoSuchKey", "NoSuchKey")
    check(client_error(s3.put_object, Bucket="no-such-bucket", Key="k", Body=b"x")[0] == "NoSuchBucket", "put to missing bucket")
    st, text = raw("HEAD", "/%s/no-such-key" % b, sign("HEAD", "/%s/no-such-key" % b))
    check(st == 404 and "<Error>" not in text, "HEAD error has no body: %r" % text[-200:])

    # wrong Content-MD5 / malformed Content-MD5
    body = b"payload" * 100
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    check(client_error(s3.put_object, Bucket=b, Key="md5", Body=body, ContentMD5=wrong_md5)[0] == "BadDigest", "BadDigest")
    absent(s3, b, "md5", "wrong Content-MD5")
    h = sign("PUT", "/%s/md5" % b, headers={"content-md5": "not-base64!!"})
    st, text = raw("PUT", "/%s/md5" % b, h, body)
    check(st == 400 and code_of(text) == "InvalidDigest", "InvalidDigest: %s %s" % (st, code_of(text)))
    absent(s3, b, "md5", "malformed Content-MD5")
    right_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=b, Key="md5ok", Body=body, ContentMD5=right_md5)

    # wrong checksums: each algorithm in a header
    for algo, value in [("CRC32", "AAAAAA=="), ("SHA256", base64.b64encode(hashlib.sha256(b"x").digest()).decode())]:
        e = client_error(s3.put_object, Bucket=b, Key="ck-" + algo, Body=body, **{"Checksum" + algo: value})
        check(e[0] == "BadDigest", "wrong %s: %r" % (algo, e))
        absent(s3, b, "ck-" + algo, "wrong " + algo)
    # x-amz-content-sha256 that does not match the body
    h = sign("PUT", "/%s/sha" % b, payload_hash=sha256_hex(b"something else"))
    st, text = raw("PUT", "/%s/sha" % b, h, body)
    check(st == 400 and code_of(text) == "XAmzContentSHA256Mismatch", "sha256 mismatch: %s %s" % (st, code_of(text)))
    absent(s3, b, "sha", "x-amz-content-sha256 mismatch")
    # a signed payload hash that matches is accepted
    h = sign("PUT", "/%s/sha-ok" % b, payload_hash=sha256_hex(body))
    st, text = raw("PUT", "/%s/sha-ok" % b, h, body)
    check(st == 200, "signed payload: %s %s" % (st, text[:300]))

    # truncated body: Content-Length promises more than is sent
    h = sign("PUT", "/%s/truncated" % b, headers={"content-length": "100000"})
    st, text = raw("PUT", "/%s/truncated" % b, h, os.urandom(100000), send_bytes=40000)
    check(st in (None, 400), "truncated body answered %s" % st)
    absent(s3, b, "truncated", "truncated body")
    # client disconnect mid-upload (RST)
    h = sign("PUT", "/%s/vanished" % b, headers={"content-length": str(50 << 20)})
    raw("PUT", "/%s/vanished" % b, h, os.urandom(8 << 20), abort=True)
    time.sleep(0.5)
    absent(s3, b, "vanished", "client disconnect")
    # signed aws-chunked body cut short is not stored either
    h = sign("PUT", "/%s/chunked" % b, headers={"content-encoding": "aws-chunked", "x-amz-decoded-content-length": "1000", "content-length": "1200"},
             payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    partial = b"3e8;chunk-signature=" + b"0" * 64 + b"\r\n" + b"x" * 500
    st, text = raw("PUT", "/%s/chunked" % b, h, partial, send_bytes=len(partial))
    check(st in (None, 400, 403), "truncated aws-chunked answered %s" % st)
    absent(s3, b, "chunked", "truncated aws-chunked")

    # DeleteObjects without Content-MD5 or checksum is refused; with a wrong one too
    xml = b"<Delete><Object><Key>exists</Key></Object></Delete>"
    h = sign("POST", "/" + b, query="delete=", headers={"content-type": "application/xml"})
    st, text = raw("POST", "/" + b, h, xml, query="delete=")
    check(st == 400 and code_of(text) == "InvalidRequest", "DeleteObjects without digest: %s %s" % (st, code_of(text)))
    h = sign("POST", "/" + b, query="delete=", headers={"content-md5": wrong_md5})
    st, text = raw("POST", "/" + b, h, xml, query="delete=")
    check(st == 400 and code_of(text) == "BadDigest", "DeleteObjects wrong MD5: %s %s" % (st, code_of(text)))
    check(s3.get_object(Bucket=b, Key="exists")["Body"].read() == b"data", "nothing deleted")

    # virtual-host-style addressing: Host bucket.localhost:PORT, signed accordingly
    vhost = "%s.localhost:%d" % (b, PORT)
    h = sign("GET", "/exists", host=vhost)
    st, text = raw("GET", "/exists", h)
    check(st == 200 and text.endswith("data"), "virtual-host GET: %s %s" % (st, text[:200]))
    h = sign("PUT", "/vh-put", host=vhost, payload_hash=sha256_hex(b"vh"))
    st, text = raw("PUT", "/vh-put", h, b"vh")
    check(st == 200 and s3.get_object(Bucket=b, Key="vh-put")["Body"].read() == b"vh", "virtual-host PUT")

    # the server is still healthy after all of this
    check(s3.list_objects_v2(Bucket=b)["KeyCount"] >= 3, "server alive")
    print("OK %d checks" % checks)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED after %d checks: %s" % (checks, e))
        sys.exit(1)
