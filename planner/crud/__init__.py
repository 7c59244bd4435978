"""Store operations behind the API: keyword-only functions taking a Session first; callers commit."""
