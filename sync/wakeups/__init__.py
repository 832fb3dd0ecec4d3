"""Wake-up sources: they only tell the service to look; the database decides the work."""
