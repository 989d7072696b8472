// The feed: every avatar from one BatchCreateDownloadUrls call (our app makes it), and the
// default picture for users without one (S3 answers 403 or 404; <img> sees an error).
import { DEFAULT_AVATAR, api, showImage } from "/static/avatar.js";

const list = document.getElementById("feed");
const { avatars } = await api("/api/feed");
document.getElementById("summary").textContent =
  `${avatars.length} users, their download URLs from one call.`;

await Promise.all(avatars.map(async ({ user_id, url }) => {
  const item = document.createElement("li");
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  const caption = document.createElement("figcaption");
  img.alt = user_id;
  img.width = img.height = 88;
  img.dataset.user = user_id;
  img.referrerPolicy = "no-referrer";
  caption.textContent = user_id;
  figure.append(img, caption);
  item.append(figure);
  list.append(item);
  if (await showImage(img, url)) {
    img.dataset.avatar = "own";
  } else {
    await showImage(img, DEFAULT_AVATAR);
    img.dataset.avatar = "default";
  }
}));
document.body.dataset.ready = "true";
