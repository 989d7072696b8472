// Signs and verifies with AWS's JavaScript CloudFront signer and Node's crypto, for the
// Python tests to compare with avatar-signer's own signer (tests/test_cloudfront_signing.py).
//
// stdin: {"cookies": [case], "urls": [case], "verify": [check]}, where
//   case  = {privateKey (PEM), keyPairId, resource | url, expires (Unix seconds), algorithm}
//   check = {publicKey (PEM), message (base64), signature (CloudFront base64), algorithm}
// stdout: {"cookies": [{policy, cookies}], "urls": [url], "verify": [true | false]}
//
// The custom policy is written here from the shape AWS documents, not taken from Python.
"use strict";

const crypto = require("node:crypto");
const { getSignedCookies, getSignedUrl } = require("@aws-sdk/cloudfront-signer");

function customPolicy(resource, expires) {
  return JSON.stringify({
    Statement: [{ Resource: resource, Condition: { DateLessThan: { "AWS:EpochTime": expires } } }],
  });
}

function fromCloudFrontBase64(text) {
  const plain = text.replace(/-/g, "+").replace(/_/g, "=").replace(/~/g, "/");
  return Buffer.from(plain, "base64");
}

function main(request) {
  const cookies = (request.cookies || []).map((c) => {
    const policy = customPolicy(c.resource, c.expires);
    return {
      policy,
      cookies: getSignedCookies({
        policy,
        keyPairId: c.keyPairId,
        privateKey: c.privateKey,
        algorithm: c.algorithm,
      }),
    };
  });
  const urls = (request.urls || []).map((c) =>
    getSignedUrl({
      url: c.url,
      dateLessThan: new Date(c.expires * 1000),
      keyPairId: c.keyPairId,
      privateKey: c.privateKey,
      algorithm: c.algorithm,
    }),
  );
  const verify = (request.verify || []).map((v) =>
    crypto.verify(
      v.algorithm === "SHA256" ? "sha256" : "sha1",
      Buffer.from(v.message, "base64"),
      v.publicKey,
      fromCloudFrontBase64(v.signature),
    ),
  );
  return { cookies, urls, verify };
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  process.stdout.write(JSON.stringify(main(JSON.parse(input))));
});
