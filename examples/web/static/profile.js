// The profile page: choose a file -> check -> SHA-256 -> upload URL -> PUT -> confirm -> show.
import {
  UploadProblem, api, askForUpload, confirmUpload, doneMessage, formatBytes, putSigned,
  refuseEarly, setStatus, showDefaultAvatar, showOwnAvatar, signOut, whoAmI,
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
    const signed = await askForUpload(bytes, config, file.type);
    setStatus(status, "working", "Uploading…");
    await putSigned(signed, bytes);
    // Not the avatar yet: the service verifies the bytes and publishes them, or refuses.
    setStatus(status, "working", "Checking the upload…");
    const confirmed = await confirmUpload(signed);
    if (!(await showOwnAvatar(avatar))) throw new UploadProblem("The new avatar could not be shown.");
    setStatus(status, "done", doneMessage(confirmed));
  } catch (error) {
    if (error instanceof UploadProblem) setStatus(status, "error", error.message, error.reason);
    else setStatus(status, "error", `Upload failed: ${error}`);
  } finally {
    input.value = "";
  }
});
// "Remove photo": the service deletes the avatar (and no earlier upload can bring it back).
document.getElementById("remove").addEventListener("click", async () => {
  try {
    setStatus(status, "working", "Removing your photo…");
    const removed = await api("/api/remove", {});
    await showDefaultAvatar(avatar);
    const minutes = Math.ceil(removed.cached_copies_expire_within_seconds / 60);
    setStatus(
      status,
      "done",
      removed.deleted
        ? `Your photo is removed. Copies others already loaded may show for up to ${minutes} min.`
        : "You had no photo.",
    );
  } catch (error) {
    if (error instanceof UploadProblem) setStatus(status, "error", error.message, error.reason);
    else setStatus(status, "error", `Removing failed: ${error}`);
  }
});
document.body.dataset.ready = "true";
