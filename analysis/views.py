from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from analysis.access import clinic_for


@login_required
def home(request):
    return render(request, "home.html", {"clinic": clinic_for(request.user)})
