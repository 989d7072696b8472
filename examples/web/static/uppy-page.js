// Uppy (the npm `uppy` bundle, served from our own origin) with its AWS S3 plugin.
//
// Uppy 5's `getUploadParameters` returns { method, url, headers } and sends exactly those
// headers, so the signed Content-Type and x-amz-checksum-sha256 reach S3. (Uppy 6's
// `signRequest` returns only a URL until @uppy/aws-s3 6.2, which adds `headers`; the
// `uppy` bundle 6.0.1 carries @uppy/aws-s3 6.1.0.) The bucket's CORS rule must expose
// ETag: Uppy 5 never finishes an upload whose ETag it cannot read.
import { AwsS3, Dashboard, Uppy } from "/vendor/uppy/uppy.min.mjs";
import {
  UploadProblem, askForUpload, confirmIfNeeded, headersToSend, refuseEarly, setStatus,
  showOwnAvatar, signOut, whoAmI,
} from "/static/avatar.js";

const avatar = document.getElementById("avatar");
const status = document.getElementById("status");
const config = await whoAmI();
document.getElementById("who").textContent = config.user;
document.getElementById("signout").addEventListener("click", signOut);
await showOwnAvatar(avatar);

const answers = new Map(); // Uppy file id -> our upload answer (for the confirm step)

const uppy = new Uppy({
  autoProceed: true,
  restrictions: {
    maxNumberOfFiles: 1,
    maxFileSize: config.max_upload_bytes,
    allowedFileTypes: config.allowed_types,
  },
  onBeforeFileAdded: (file) => {
    const problem = refuseEarly({ name: file.name, size: file.size, type: file.type }, config);
    if (problem) {
      setStatus(status, "error", problem);
      return false;
    }
    return true;
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
  async getUploadParameters(file) {
    setStatus(status, "working", "Uploading…");
    const bytes = await file.data.arrayBuffer();
    const signed = await askForUpload(bytes, config);
    answers.set(file.id, signed);
    // Uppy sends file.data as the body; the browser sets Content-Length from it.
    return { method: signed.method, url: signed.url, headers: headersToSend(signed.headers) };
  },
});

uppy.on("restriction-failed", (file, error) => setStatus(status, "error", error.message));
uppy.on("upload-error", (file, error) => {
  const status_ = error?.source?.status;
  const message = error instanceof UploadProblem
    ? error.message
    : status_ ? `Storage refused the upload: ${status_}.` : `Upload failed: ${error.message}`;
  setStatus(status, "error", message);
});
uppy.on("upload-success", async (file) => {
  try {
    const signed = answers.get(file.id);
    answers.delete(file.id);
    if (signed?.confirm) {
      setStatus(status, "working", "Checking the upload…");
      await confirmIfNeeded(signed);
    }
    if (!(await showOwnAvatar(avatar))) throw new UploadProblem("The new avatar could not be shown.");
    setStatus(status, "done", "Your new avatar is up.");
  } catch (error) {
    setStatus(status, "error", error.message);
  }
});
// One avatar at a time: once a batch is done, the next file starts a new one.
uppy.on("complete", () => uppy.clear());
document.body.dataset.ready = "true";
