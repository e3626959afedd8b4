"""The web inbox: server-rendered pages under /inbox, served by the API process (README
"Web inbox"). A signed-in user acts, per org, as the keys.Principal of their role there."""
