// Node client for avatarsigner.v1.AvatarSigner, loading the project's .proto at run time.
//
//   node upload_and_fetch.js --target 127.0.0.1:50051 --user alice --file avatar.png
//   (a bearer token for a server with a callers file: AVATAR_SIGNER_TOKEN in the environment)
//
// Asks for an upload URL (type, length and SHA-256 of the file are signed into it), PUTs the
// raw bytes with exactly the returned headers, and, where the server verifies uploads (the
// answer has an upload_id), confirms the upload: the service checks the image and publishes
// it without its metadata. Then it asks for a download URL, fetches the avatar and checks it
// is what was stored (the confirmed SHA-256, or the uploaded bytes in direct mode). Prints
// one JSON line; exits non-zero on any failure. It never prints a presigned URL: those are
// bearer credentials until they expire.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const https = require("node:https");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.resolve(__dirname, "../../protos/avatarsigner/v1/avatar_signer.proto");

function parseArgs(argv) {
  const args = { target: "127.0.0.1:50051", user: null, file: null };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in args) || argv[i + 1] === undefined) {
      throw new Error(`usage: node upload_and_fetch.js --target HOST:PORT --user ID --file IMAGE`);
    }
    args[name] = argv[i + 1];
  }
  if (!args.user || !args.file) throw new Error("--user and --file are required");
  return args;
}

function contentTypeOf(bytes) {
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return "image/png";
  if (bytes.subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff]))) return "image/jpeg";
  if (bytes.subarray(0, 4).toString("latin1") === "RIFF" && bytes.subarray(8, 12).toString("latin1") === "WEBP") return "image/webp";
  throw new Error("not a PNG, JPEG or WebP image");
}

function loadClient(target) {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names exactly as in the .proto (user_id, content_type, ...)
    longs: String,
    defaults: true,
    includeDirs: [path.resolve(__dirname, "../../protos")],
  });
  const { avatarsigner } = grpc.loadPackageDefinition(definition);
  return new avatarsigner.v1.AvatarSigner(target, grpc.credentials.createInsecure());
}

function call(client, method, request) {
  const deadline = new Date(Date.now() + 30000);
  const metadata = new grpc.Metadata();
  if (process.env.AVATAR_SIGNER_TOKEN) {
    metadata.set("authorization", `Bearer ${process.env.AVATAR_SIGNER_TOKEN}`);
  }
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) => {
      if (error) reject(new Error(`${method}: ${grpc.status[error.code]}: ${error.details}`));
      else resolve(response);
    });
  });
}

function send(method, url, headers, body) {
  const transport = url.startsWith("https:") ? https : http;
  return new Promise((resolve, reject) => {
    const request = transport.request(url, { method, headers }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode, body: Buffer.concat(chunks) }));
    });
    request.on("error", reject);
    request.end(body);
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const bytes = fs.readFileSync(args.file);
  const client = loadClient(args.target);
  try {
    const upload = await call(client, "CreateUploadUrl", {
      user_id: args.user,
      content_type: contentTypeOf(bytes),
      content_length: bytes.length,
      checksum_sha256: crypto.createHash("sha256").update(bytes).digest("base64"),
    });
    const put = await send(upload.method, upload.url, upload.headers, bytes);
    if (put.status !== 200) throw new Error(`upload refused by S3: HTTP ${put.status}`);

    let key = upload.key;
    let stored = crypto.createHash("sha256").update(bytes).digest("base64");
    let confirmed = null;
    if (upload.upload_id) {
      const done = await call(client, "ConfirmUpload", {
        user_id: args.user,
        upload_id: upload.upload_id,
      });
      key = done.key;
      stored = done.checksum_sha256;
      confirmed = { width: done.width, height: done.height, metadata_removed: done.metadata_removed };
    }

    const download = await call(client, "CreateDownloadUrl", { user_id: args.user });
    const got = await send("GET", download.url, {}, undefined);
    if (got.status !== 200) throw new Error(`download refused by S3: HTTP ${got.status}`);
    const same = crypto.createHash("sha256").update(got.body).digest("base64") === stored;
    console.log(JSON.stringify({ key, bytes: got.body.length, same, confirmed }));
    if (!same) process.exitCode = 1;
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`upload_and_fetch: ${error.message}`);
  process.exitCode = 1;
});
