#!/usr/bin/env python3
"""boto3 (newest from pip, default settings) against a running cairn: put, get, head, list, delete, copy,
multipart, DeleteObjects, conditional put, range get. Over HTTPS the SDK sends aws-chunked bodies with
unsigned payload and a CRC32 trailer; over HTTP a CRC32 header. Both must work unmodified.

Environment: ENDPOINT, AWS_* credentials, AWS_CA_BUNDLE for HTTPS. Prints "OK <n> checks" at the end.
"""
import base64
import hashlib
import os
import sys
import zlib

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def error_code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} should have failed")


def client(**cfg):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **cfg),
    )


def crc32_b64(data):
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def main():
    s3 = client()
    bucket = "boto3-" + ("tls" if ENDPOINT.startswith("https") else "plain")
    s3.create_bucket(Bucket=bucket)
    check(error_code(s3.create_bucket, Bucket=bucket)[0] == "BucketAlreadyOwnedByYou", "409 on re-create")
    s3.head_bucket(Bucket=bucket)
    check(any(b["Name"] == bucket for b in s3.list_buckets()["Buckets"]), "list_buckets")
    check(s3.get_bucket_location(Bucket=bucket).get("LocationConstraint") in (None, ""), "location")
    check("Status" not in s3.get_bucket_versioning(Bucket=bucket), "versioning empty")
    check(
        error_code(s3.get_object_lock_configuration, Bucket=bucket)[0] == "ObjectLockConfigurationNotFoundError",
        "object lock 404",
    )

    # put (default CRC32 checksum: header over HTTP, aws-chunked trailer over HTTPS), get, head
    body = os.urandom(300_000)
    r = s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=body, Metadata={"Owner": "me"}, ContentType="application/x-test")
    check(r["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), "ETag is quoted MD5")
    check(r.get("ChecksumCRC32") == crc32_b64(body), "CRC32 echoed on put: %r" % r.get("ChecksumCRC32"))
    g = s3.get_object(Bucket=bucket, Key="dir/obj.bin", ChecksumMode="ENABLED")
    check(g["Body"].read() == body, "get returns the bytes")
    check(g["Metadata"] == {"owner": "me"}, "user metadata: %r" % g["Metadata"])
    check(g["ContentType"] == "application/x-test", "content type")
    check(g.get("ChecksumCRC32") == crc32_b64(body), "stored CRC32 echoed on GET")
    h = s3.head_object(Bucket=bucket, Key="dir/obj.bin", ChecksumMode="ENABLED")
    check(h["ContentLength"] == len(body) and h["ETag"] == r["ETag"], "head")
    check(h.get("ChecksumCRC32") == crc32_b64(body), "stored CRC32 echoed on HEAD")

    # explicit other algorithms
    for algo in ["CRC32C", "SHA1", "SHA256", "CRC64NVME"]:
        try:
            r = s3.put_object(Bucket=bucket, Key="algo/" + algo, Body=b"abc" * 1000, ChecksumAlgorithm=algo)
        except botocore.exceptions.MissingDependencyException:
            continue  # CRC32C/CRC64NVME need awscrt in some botocore versions
        check(r.get("Checksum" + algo), "checksum %s echoed" % algo)
        h = s3.head_object(Bucket=bucket, Key="algo/" + algo, ChecksumMode="ENABLED")
        check(h.get("Checksum" + algo) == r.get("Checksum" + algo), "checksum %s stored" % algo)

    # range get: closed, open-ended, suffix; 416 beyond the end; never a full-object checksum on a range
    g = s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=10-19", ChecksumMode="ENABLED")
    check(g["Body"].read() == body[10:20], "closed range")
    check(g["ContentRange"] == "bytes 10-19/%d" % len(body), "content-range")
    check("ChecksumCRC32" not in g, "no full-object checksum on a range")
    g = s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=299990-")
    check(g["Body"].read() == body[299990:], "open-ended range")
    g = s3.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=-5")
    check(g["Body"].read() == body[-5:], "suffix range")
    check(error_code(s3.get_object, Bucket=bucket, Key="dir/obj.bin", Range="bytes=400000-")[1] == 416, "416")

    # conditional reads
    etag = r_etag = s3.head_object(Bucket=bucket, Key="dir/obj.bin")["ETag"]
    check(s3.get_object(Bucket=bucket, Key="dir/obj.bin", IfMatch=etag)["ETag"] == etag, "If-Match ok")
    check(error_code(s3.get_object, Bucket=bucket, Key="dir/obj.bin", IfMatch='"0000"')[1] == 412, "If-Match 412")
    check(error_code(s3.get_object, Bucket=bucket, Key="dir/obj.bin", IfNoneMatch=r_etag)[1] == 304, "If-None-Match 304")
    lm = s3.head_object(Bucket=bucket, Key="dir/obj.bin")["LastModified"]
    check(error_code(s3.get_object, Bucket=bucket, Key="dir/obj.bin", IfModifiedSince=lm)[1] == 304, "IMS 304")

    # conditional put: If-None-Match: * -> 412 when the key exists
    s3.put_object(Bucket=bucket, Key="cond", Body=b"first", IfNoneMatch="*")
    check(error_code(s3.put_object, Bucket=bucket, Key="cond", Body=b"second", IfNoneMatch="*")[1] == 412, "412")
    check(s3.get_object(Bucket=bucket, Key="cond")["Body"].read() == b"first", "first write kept")

    # copy: COPY keeps metadata, REPLACE replaces it, copy onto itself needs REPLACE
    s3.copy_object(Bucket=bucket, Key="copy1", CopySource={"Bucket": bucket, "Key": "dir/obj.bin"})
    c = s3.get_object(Bucket=bucket, Key="copy1")
    check(c["Body"].read() == body and c["Metadata"] == {"owner": "me"}, "COPY")
    s3.copy_object(
        Bucket=bucket, Key="copy2", CopySource="%s/dir/obj.bin" % bucket, MetadataDirective="REPLACE",
        Metadata={"new": "1"}, ContentType="text/plain",
    )
    c = s3.head_object(Bucket=bucket, Key="copy2")
    check(c["Metadata"] == {"new": "1"} and c["ContentType"] == "text/plain", "REPLACE")
    check(c["ETag"] == etag, "copy keeps the ETag")
    check(
        error_code(s3.copy_object, Bucket=bucket, Key="copy2", CopySource={"Bucket": bucket, "Key": "copy2"})[0]
        == "InvalidRequest",
        "self-copy without REPLACE",
    )
    s3.copy_object(
        Bucket=bucket, Key="copy2", CopySource={"Bucket": bucket, "Key": "copy2"}, MetadataDirective="REPLACE",
        Metadata={"newer": "2"},
    )
    check(s3.head_object(Bucket=bucket, Key="copy2")["Metadata"] == {"newer": "2"}, "self-copy with REPLACE")
    s3.put_object(Bucket=bucket, Key="odd key+ü", Body=b"odd")
    s3.copy_object(Bucket=bucket, Key="odd-copy", CopySource={"Bucket": bucket, "Key": "odd key+ü"})
    check(s3.get_object(Bucket=bucket, Key="odd-copy")["Body"].read() == b"odd", "URL-encoded copy source")

    # multipart: 2 x 5 MiB + tail, with ListParts / ListMultipartUploads / UploadPartCopy, then complete
    mp = s3.create_multipart_upload(Bucket=bucket, Key="mp.bin", Metadata={"kind": "mp"})
    uid = mp["UploadId"]
    p1, p2, p3 = os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(1234)
    e1 = s3.upload_part(Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=2, Body=p2)["ETag"]
    e3 = s3.upload_part_copy(
        Bucket=bucket, Key="mp.bin", UploadId=uid, PartNumber=3, CopySource={"Bucket": bucket, "Key": "dir/obj.bin"},
        CopySourceRange="bytes=0-1233",
    )["CopyPartResult"]["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp.bin", UploadId=uid)["Parts"]
    check([p["PartNumber"] for p in parts] == [1, 2, 3], "list_parts")
    check(parts[2]["Size"] == 1234, "copied part size")
    ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    check(any(u["UploadId"] == uid for u in ups), "list_multipart_uploads")
    bad = error_code(
        s3.complete_multipart_upload, Bucket=bucket, Key="mp.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]},
    )
    check(bad[0] == "InvalidPartOrder", "InvalidPartOrder: %r" % (bad,))
    bad = error_code(
        s3.complete_multipart_upload, Bucket=bucket, Key="mp.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]},
    )
    check(bad[0] == "InvalidPart", "InvalidPart: %r" % (bad,))
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}]},
    )
    md5s = b"".join(hashlib.md5(p).digest() for p in (p1, p2, body[:1234]))
    check(done["ETag"] == '"%s-3"' % hashlib.md5(md5s).hexdigest(), "multipart ETag %s" % done["ETag"])
    g = s3.get_object(Bucket=bucket, Key="mp.bin")
    check(g["Body"].read() == p1 + p2 + body[:1234], "multipart bytes")
    check(g["Metadata"] == {"kind": "mp"}, "multipart metadata")
    g = s3.get_object(Bucket=bucket, Key="mp.bin", PartNumber=2)
    check(g["Body"].read() == p2 and g.get("PartsCount") == 3, "GET partNumber")
    check(error_code(s3.list_parts, Bucket=bucket, Key="mp.bin", UploadId=uid)[0] == "NoSuchUpload", "completed")

    # a too-small non-final part is EntityTooSmall; abort removes the upload
    mp = s3.create_multipart_upload(Bucket=bucket, Key="small-mp")
    uid = mp["UploadId"]
    a = s3.upload_part(Bucket=bucket, Key="small-mp", UploadId=uid, PartNumber=1, Body=b"x" * 100)["ETag"]
    b = s3.upload_part(Bucket=bucket, Key="small-mp", UploadId=uid, PartNumber=2, Body=b"y" * 100)["ETag"]
    bad = error_code(
        s3.complete_multipart_upload, Bucket=bucket, Key="small-mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": a}, {"PartNumber": 2, "ETag": b}]},
    )
    check(bad[0] == "EntityTooSmall", "EntityTooSmall: %r" % (bad,))
    s3.abort_multipart_upload(Bucket=bucket, Key="small-mp", UploadId=uid)
    check(error_code(s3.list_parts, Bucket=bucket, Key="small-mp", UploadId=uid)[0] == "NoSuchUpload", "aborted")

    # the high-level transfer manager (multipart with the SDK's default checksums, 8 MiB parts)
    big = os.urandom(20 << 20)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "cairn-boto3-%d.bin" % os.getpid())
    with open(path, "wb") as f:
        f.write(big)
    try:
        s3.upload_file(path, bucket, "tm/big.bin")
        s3.download_file(bucket, "tm/big.bin", path + ".back")
        with open(path + ".back", "rb") as f:
            check(f.read() == big, "transfer manager round trip")
    finally:
        for p in (path, path + ".back"):
            if os.path.exists(p):
                os.remove(p)

    # listing: V2 with prefix/delimiter/pagination/start-after/url encoding, V1 with markers
    for i in range(25):
        s3.put_object(Bucket=bucket, Key="list/%02d/x" % (i % 5) if i < 5 else "list/k%02d" % i, Body=b"")
    seen, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": "list/", "MaxKeys": 7}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    check(seen == sorted(seen) and len(seen) == 25, "V2 pagination: %r" % seen)
    d = s3.list_objects_v2(Bucket=bucket, Prefix="list/", Delimiter="/")
    check([p["Prefix"] for p in d["CommonPrefixes"]] == ["list/%02d/" % i for i in range(5)], "common prefixes")
    check(len(d["Contents"]) == 20, "keys beside prefixes")
    sa = s3.list_objects_v2(Bucket=bucket, Prefix="list/", StartAfter="list/k20")
    check([o["Key"] for o in sa["Contents"]] == ["list/k%02d" % i for i in range(21, 25)], "start-after")
    enc = s3.list_objects_v2(Bucket=bucket, Prefix="odd", EncodingType="url")
    got = [o["Key"] for o in enc["Contents"]]
    # With an explicit EncodingType boto3 hands the encoded keys through (it decodes only what it asked for).
    check(got == ["odd%20key%2B%C3%BC", "odd-copy"], "url-encoded keys: %r" % got)
    auto = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="odd")["Contents"]]
    check(auto == ["odd key+ü", "odd-copy"], "keys decoded by boto3: %r" % auto)
    v1, marker = [], ""
    while True:
        page = s3.list_objects(Bucket=bucket, Prefix="list/", MaxKeys=6, Marker=marker)
        keys = [o["Key"] for o in page.get("Contents", [])]
        v1 += keys
        if not page["IsTruncated"]:
            break
        marker = page.get("NextMarker") or keys[-1]
    check(v1 == seen, "V1 pagination with markers")

    # DeleteObjects (newest SDKs send CRC32 instead of Content-MD5), quiet and verbose
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "list/k%02d" % i} for i in range(5, 15)]})
    check(len(r.get("Deleted", [])) == 10 and not r.get("Errors"), "delete_objects verbose")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "list/k%02d" % i} for i in range(15, 25)], "Quiet": True})
    check(not r.get("Deleted") and not r.get("Errors"), "delete_objects quiet")
    check(s3.list_objects_v2(Bucket=bucket, Prefix="list/k")["KeyCount"] == 0, "deleted")

    # delete: 204 even if missing; gone afterwards
    s3.delete_object(Bucket=bucket, Key="dir/obj.bin")
    s3.delete_object(Bucket=bucket, Key="never-existed")
    check(error_code(s3.head_object, Bucket=bucket, Key="dir/obj.bin")[1] == 404, "deleted object 404")
    check(error_code(s3.get_object, Bucket=bucket, Key="dir/obj.bin")[0] == "NoSuchKey", "NoSuchKey")
    check(error_code(s3.get_object, Bucket="no-such-bucket-x", Key="k")[0] == "NoSuchBucket", "NoSuchBucket")

    # virtual-host-style addressing (bucket.localhost)
    if "127.0.0.1" in ENDPOINT and ENDPOINT.startswith("http://"):
        vh = boto3.client(
            "s3", endpoint_url=ENDPOINT.replace("127.0.0.1", "localhost"),
            config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}),
        )
        try:
            vh.put_object(Bucket=bucket, Key="vhost", Body=b"virtual")
            check(s3.get_object(Bucket=bucket, Key="vhost")["Body"].read() == b"virtual", "virtual-host put")
        except botocore.exceptions.EndpointConnectionError:
            pass  # no resolver for *.localhost on this machine

    print("OK %d checks" % checks)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED after %d checks: %s" % (checks, e))
        sys.exit(1)
