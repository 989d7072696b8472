// The profile page: choose a file -> check -> SHA-256 -> upload URL -> PUT -> (confirm) -> show.
import {
  UploadProblem, askForUpload, confirmIfNeeded, formatBytes, putSigned, refuseEarly,
  setStatus, showOwnAvatar, signOut, whoAmI,
} from "/static/avatar.js";

const avatar = document.getElementById("avatar");
const input = document.getElementById("file");
const status = document.getElementById("status");

const config = await whoAmI();
document.getElementById("who").textContent = config.user;
document.getElementById("signout").addEventListener("click", signOut);
document.getElementById("limits").textContent =
  `${config.allowed_types.map((t) => t.split("/")[1].toUpperCase()).join(", ")}; at most ${formatBytes(config.max_upload_bytes)}.`;
input.accept = config.allowed_types.join(",");
await showOwnAvatar(avatar);

input.addEventListener("change", async () => {
  const file = input.files[0];
  if (!file) return;
  const problem = refuseEarly(file, config);
  if (problem) {
    setStatus(status, "error", problem);
    input.value = "";
    return;
  }
  try {
    setStatus(status, "working", "Checking the picture…");
    // Read once: the bytes hashed are the bytes sent, even if the file changes on disk.
    const bytes = await file.arrayBuffer();
    const signed = await askForUpload(bytes, config);
    setStatus(status, "working", "Uploading…");
    await putSigned(signed, bytes);
    if (signed.confirm) {
      setStatus(status, "working", "Checking the upload…");
      await confirmIfNeeded(signed);
    }
    if (!(await showOwnAvatar(avatar))) throw new UploadProblem("The new avatar could not be shown.");
    setStatus(status, "done", "Your new avatar is up.");
  } catch (error) {
    setStatus(status, "error", error instanceof UploadProblem ? error.message : `Upload failed: ${error}`);
  } finally {
    input.value = "";
  }
});
document.body.dataset.ready = "true";
