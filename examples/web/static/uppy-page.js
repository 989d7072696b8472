// Uppy (the npm `uppy` bundle, served from our own origin) with its AWS S3 plugin.
//
// Uppy 5's `getUploadParameters` returns { method, url, headers } and sends exactly those
// headers, so the signed Content-Type, x-amz-checksum-sha256, If-None-Match and fixed
// object headers reach S3;
// on "upload-success" the page asks our app to confirm the upload. (Uppy 6's
// `signRequest` returns only a URL until @uppy/aws-s3 6.2, which adds `headers`; the
// `uppy` bundle 6.0.1 carries @uppy/aws-s3 6.1.0.) The bucket's CORS rule must expose
// ETag: Uppy 5 never finishes an upload whose ETag it cannot read.
import { AwsS3, Dashboard, Uppy } from "/vendor/uppy/uppy.min.mjs";
import {
  UploadProblem, askForUpload, confirmUpload, doneMessage, headersToSend, refuseEarly,
  setStatus, showOwnAvatar, signOut, whoAmI,
} from "/static/avatar.js";

const avatar = document.getElementById("avatar");
const status = document.getElementById("status");
const config = await whoAmI();
document.getElementById("who").textContent = config.user;
document.getElementById("signout").addEventListener("click", signOut);
await showOwnAvatar(avatar);

const answers = new Map(); // Uppy file id -> our upload answer (for the confirm step)
let refusedEarly = null; // why the file last offered was refused before any request

const uppy = new Uppy({
  autoProceed: true,
  restrictions: {
    maxNumberOfFiles: 1,
    maxFileSize: config.max_upload_bytes,
    allowedFileTypes: config.allowed_types,
  },
  // Our own checks, with our words: Uppy then reports "restriction-failed" (below).
  onBeforeFileAdded: (file) => {
    refusedEarly = refuseEarly({ name: file.name, size: file.size, type: file.type }, config);
    return refusedEarly === null;
  },
});
uppy.use(Dashboard, {
  inline: true,
  target: "#uppy",
  height: 320,
  proudlyDisplayPoweredByUppy: false,
  note: `${config.allowed_types.join(", ")}, one file`,
});
uppy.use(AwsS3, {
  shouldUseMultipart: false,
  // Uppy 5's hook for a presigned PUT: what it returns is exactly what Uppy sends.
  async getUploadParameters(file) {
    setStatus(status, "working", "Uploading…");
    const bytes = await file.data.arrayBuffer();
    const signed = await askForUpload(bytes, config, file.type);
    answers.set(file.id, signed);
    // Every returned header a script may set (all but Content-Length); Uppy sends
    // file.data as the body and the browser sets Content-Length from it (Uppy would fail
    // to set it: "Refused to set unsafe header").
    return { method: signed.method, url: signed.url, headers: headersToSend(signed.headers) };
  },
});

uppy.on("restriction-failed", (file, error) => {
  setStatus(status, "error", refusedEarly ?? error.message);
  refusedEarly = null;
});
uppy.on("upload-error", (file, error) => {
  answers.delete(file?.id);
  const httpStatus = error?.source?.status;
  if (error instanceof UploadProblem) setStatus(status, "error", error.message, error.reason);
  else if (httpStatus) setStatus(status, "error", `Storage refused the upload: ${httpStatus}.`);
  else setStatus(status, "error", `Upload failed: ${error.message}`);
});
// Uppy's upload is only the PUT: the picture becomes the avatar when our app has confirmed
// it (ConfirmUpload), which may refuse it.
uppy.on("upload-success", async (file) => {
  const signed = answers.get(file.id);
  answers.delete(file.id);
  try {
    setStatus(status, "working", "Checking the upload…");
    const confirmed = await confirmUpload(signed);
    if (!(await showOwnAvatar(avatar))) throw new UploadProblem("The new avatar could not be shown.");
    setStatus(status, "done", doneMessage(confirmed));
  } catch (error) {
    setStatus(status, "error", error.message, error.reason ?? null);
  }
});
// One avatar at a time: once a batch is done, the next file starts a new one.
uppy.on("complete", () => uppy.clear());
document.body.dataset.ready = "true";
