"""How API clients sign in: DRF's tokens, with the clinic's time zone once the token says who is asking."""

from rest_framework import authentication

from analysis.middleware import activate_clinic_zone


class TokenAuthentication(authentication.TokenAuthentication):
    """A token is read by the API view, after the middleware that sets a session user's clinic zone has run: so
    the zone is set here, and a token client's day filters and times are the clinic's, as on its pages."""

    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        activate_clinic_zone(user)
        return user, token
