// The browser side of an avatar upload, shared by the profile and Uppy pages.
//
//   check the file (type and size) before asking for anything
//   -> SHA-256 of the bytes with SubtleCrypto
//   -> ask our app for an upload URL (the app asks AvatarSigner)
//   -> PUT the raw bytes to S3 with exactly the returned headers a script may set
//      (all but Content-Length, which the browser sets: type, checksum, If-None-Match and
//      the fixed object headers)
//   -> ask our app to confirm (ConfirmUpload verifies the image and publishes it)
//   -> show the verified avatar from a download URL

// Request headers the browser sets itself and forbids scripts to set (the Fetch
// standard's forbidden request-header names). Content-Length is one: the browser sends
// the body's length, which must equal the signed length.
const FORBIDDEN = new Set([
  "accept-charset", "accept-encoding", "access-control-request-headers",
  "access-control-request-method", "connection", "content-length", "cookie", "cookie2",
  "date", "dnt", "expect", "host", "keep-alive", "origin", "referer", "set-cookie", "te",
  "trailer", "transfer-encoding", "upgrade", "via",
]);

export const DEFAULT_AVATAR = "/static/default-avatar.svg";

/** The headers of an upload answer that the page sends itself (all but forbidden ones). */
export function headersToSend(headers) {
  const send = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (FORBIDDEN.has(lower) || lower.startsWith("proxy-") || lower.startsWith("sec-")) continue;
    send[name] = value;
  }
  return send;
}

/** The image type the bytes start with (magic numbers), or null. */
export function sniffType(bytes) {
  const b = new Uint8Array(bytes.slice(0, 12));
  const starts = (...sig) => sig.every((v, i) => b[i] === v);
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return "image/png";
  if (starts(0x52, 0x49, 0x46, 0x46) && b[8] === 0x57 && b[9] === 0x45 && b[10] === 0x42 && b[11] === 0x50) {
    return "image/webp";
  }
  if (starts(0x47, 0x49, 0x46, 0x38)) return "image/gif";
  return null;
}

/** Why this file cannot be an avatar, from what the browser knows without reading it. */
export function refuseEarly(file, config) {
  if (file.size === 0) return `${file.name} is empty.`;
  if (file.size > config.max_upload_bytes) {
    return `${file.name} is ${formatBytes(file.size)}; the limit is ${formatBytes(config.max_upload_bytes)}.`;
  }
  if (file.type === "image/svg+xml" || /\.svgz?$/i.test(file.name)) {
    return "SVG images are not accepted: they can carry script.";
  }
  if (file.type && !config.allowed_types.includes(file.type)) {
    return `${file.name} is ${file.type}; accepted: ${config.allowed_types.join(", ")}.`;
  }
  return null;
}

/**
 * The type to sign: what the bytes start with when the page recognises it (a JPEG named
 * .png is signed as a JPEG), else the type the browser gave the file. This is a
 * convenience, not a check: ConfirmUpload decides whether the bytes are that image.
 */
export function contentTypeOf(bytes, config, declaredType = "") {
  const type = sniffType(bytes) ?? declaredType;
  if (!config.allowed_types.includes(type)) {
    throw new UploadProblem(`This is not a ${config.allowed_types.map((t) => t.split("/")[1].toUpperCase()).join(", ")} image.`);
  }
  return type;
}

/** SHA-256 of the bytes, base64 (the form checksum_sha256 takes). Needs a secure context. */
export async function sha256Base64(bytes) {
  if (!globalThis.crypto?.subtle) {
    throw new UploadProblem("This page needs HTTPS (or localhost) to compute the checksum.");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return btoa(String.fromCharCode(...digest));
}

/** Something the person should be told; `reason` is the service's word, when it gave one. */
export class UploadProblem extends Error {
  constructor(message, reason = null) {
    super(message);
    this.reason = reason;
  }
}

/** Calls our own app's JSON API; throws UploadProblem with the app's message. */
export async function api(path, body) {
  const init = body === undefined
    ? { credentials: "same-origin" }
    : {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      };
  const response = await fetch(path, init);
  let data = {};
  try {
    data = await response.json();
  } catch {
    // not JSON: use the status below
  }
  if (!response.ok) {
    throw new UploadProblem(data.error || `${path} answered ${response.status}`, data.reason ?? null);
  }
  return data;
}

/** Ask the app for an upload URL for these bytes (their type and SHA-256). */
export async function askForUpload(bytes, config, declaredType = "") {
  const contentType = contentTypeOf(bytes, config, declaredType);
  const checksum = await sha256Base64(bytes);
  return api("/api/upload-url", {
    content_type: contentType,
    content_length: bytes.byteLength,
    checksum_sha256: checksum,
  });
}

/** PUT the raw bytes with exactly the signed headers; throws UploadProblem. */
export async function putSigned(signed, bytes) {
  const declared = Object.entries(signed.headers).find(([n]) => n.toLowerCase() === "content-length");
  if (declared && Number(declared[1]) !== bytes.byteLength) {
    throw new UploadProblem("The file changed while it was being uploaded; choose it again.");
  }
  let response;
  try {
    response = await fetch(signed.url, {
      method: signed.method,
      headers: headersToSend(signed.headers),
      body: bytes,
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch {
    // A CORS refusal and an unreachable S3 look the same to a script.
    throw new UploadProblem(
      "The browser could not send the file to storage: this site is not allowed by the bucket's CORS rules, or storage is unreachable.",
    );
  }
  if (!response.ok) {
    const text = await response.text().catch(() => "");
    const code = /<Code>([^<]{1,64})<\/Code>/.exec(text)?.[1];
    // 412: If-None-Match: * was signed, and this upload URL has written its object already.
    throw new UploadProblem(`Storage refused the upload: ${response.status}${code ? ` ${code}` : ""}.`, code ?? null);
  }
  return response;
}

/**
 * Ask our app to confirm the upload (it calls ConfirmUpload): until then the bytes are a
 * staged upload nobody sees. Throws UploadProblem with the refusal (`reason`: NOT_AN_IMAGE,
 * TYPE_MISMATCH, ...). A service running direct uploads has no confirm step (`confirm`
 * is false): the PUT wrote the avatar itself.
 */
export async function confirmUpload(signed) {
  if (!signed.confirm) return null;
  return api("/api/confirm", { upload_id: signed.upload_id });
}

/** Load `url` into `img`; resolves true when it shows a picture, false on an error. */
export function showImage(img, url) {
  return new Promise((resolve) => {
    img.onload = () => resolve(img.naturalWidth > 0);
    img.onerror = () => resolve(false);
    img.src = url;
  });
}

/** Show the signed-in user's avatar, or the default picture when there is none yet. */
export async function showOwnAvatar(img) {
  const { url } = await api("/api/avatar-url");
  // No avatar: S3 answers 403 to a reader without s3:ListBucket (404 with it, and on
  // some S3-compatible servers); an <img> sees both as an error.
  if (await showImage(img, url)) {
    img.dataset.avatar = "own";
    return true;
  }
  await showDefaultAvatar(img);
  return false;
}

/**
 * The default picture, without asking S3. After "Remove photo" the page knows there is no
 * avatar; asking again could get the very URL it already loaded (SigV4 signs to the second,
 * and DOWNLOAD_URL_REUSE_SECONDS shares URLs on purpose), which the browser answers from
 * its image cache with the removed picture.
 */
export async function showDefaultAvatar(img) {
  img.onerror = null;
  await showImage(img, DEFAULT_AVATAR);
  img.dataset.avatar = "default";
}

/** What the person is told once the avatar is verified and shown. */
export function doneMessage(confirmed) {
  if (!confirmed) return "Your new avatar is up.";
  const kind = confirmed.content_type.split("/")[1].toUpperCase();
  const removed = confirmed.metadata_removed.length
    ? ` Removed from the file: ${confirmed.metadata_removed.join(", ")}.`
    : "";
  return `Your new avatar is up: a ${confirmed.width}×${confirmed.height} ${kind}, checked by the avatar service.${removed}`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** Show a status line; `reason` (the service's or S3's word for a refusal) goes in data-reason. */
export function setStatus(element, state, text, reason = null) {
  element.dataset.state = state;
  element.dataset.reason = reason ?? "";
  element.textContent = text;
}

/** The signed-in user and the limits, or a redirect to sign-in. */
export async function whoAmI() {
  const response = await fetch("/api/me", { credentials: "same-origin" });
  if (response.status === 401) {
    location.assign("/signin");
    throw new UploadProblem("not signed in");
  }
  return response.json();
}

export async function signOut() {
  await api("/api/signout", {});
  location.assign("/signin");
}
