"""The web console: one static page (index.html, console.js, console.css) over the admin API, no build step."""
