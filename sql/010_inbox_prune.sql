-- Pruning the web inbox's sign-in rows (orderflow_ingest/inbox/signin.py `prune`, run by the
-- periodic `purge`): a sign-in link that was used or has expired can never sign in again, and a
-- session that was ended (sign-out, `user disable`) or has expired can never be used again;
-- both only take space. The runtime role has no DELETE on either table: this function, run as
-- the schema owner, deletes only such rows, and only those ended more than `keep` ago.
CREATE FUNCTION orderflow_prune_inbox_signin(keep interval)
RETURNS TABLE (tokens bigint, sessions bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF keep < interval '0' THEN
    RAISE EXCEPTION 'keep must not be negative, not %', keep
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WITH gone AS (
    DELETE FROM public.inbox_login_token
    WHERE least(used_at, expires_at) < now() - keep  -- least() skips a NULL used_at
    RETURNING 1
  )
  SELECT count(*) INTO tokens FROM gone;
  WITH gone AS (
    DELETE FROM public.inbox_session
    WHERE least(revoked_at, expires_at) < now() - keep
    RETURNING 1
  )
  SELECT count(*) INTO sessions FROM gone;
  RETURN NEXT;
END $$;
REVOKE ALL ON FUNCTION orderflow_prune_inbox_signin(interval) FROM PUBLIC;
