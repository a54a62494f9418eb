// The viewer token (README, "Viewer security"), shared by the live page and the upload page:
// the URL printed at start carries ?token=. Kept for this tab only (sessionStorage, so the upload
// page finds the one the live page stored), taken out of the address bar (no bookmark or screen
// share shows it). The pages send it with every request: in the query of the WebSocket (browsers
// cannot set its headers), as a Bearer header on API calls. Without one, the cookie a ?token= URL
// set (or a loopback viewer that needs none) lets a page in.
//
// The page's modules are public (the server serves /static/ without a token), so their imports
// need neither the query nor the cookie.

function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  let stored = null;
  try {
    if (fromUrl) sessionStorage.setItem("roadseg-token", fromUrl);
    stored = sessionStorage.getItem("roadseg-token");
  } catch (err) {
    // storage disabled: the URL's token still serves this page load (and the cookie the server set)
  }
  if (fromUrl) {
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return fromUrl || stored;
}

// Taken once, when the page's first module imports this one: before any of its requests.
export const token = takeToken();
export const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
